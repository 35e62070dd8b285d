"""The LLM generation activity: stream tokens from the engine into the job's event stream."""

from __future__ import annotations

import time

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, LlmGeneration, LlmInput, Timings, Usage
from switchyard.common.model_registry import ModelRegistry
from switchyard.common.temporal import heartbeating
from switchyard.worker_llm.engine import EngineError, OpenAIEngine


class LlmActivities:
    def __init__(self, books: JobBookkeeping, registry: ModelRegistry, http: httpx.AsyncClient) -> None:
        self.books = books
        self.bus = books.bus
        self.registry = registry
        self.http = http

    @activity.defn(name="llm.generate")
    async def generate(self, spec: JobSpec) -> LlmGeneration:
        started = time.time()
        entry = self.registry.get(spec.model)
        if entry is None or entry.domain != "llm":
            raise ApplicationError(f"model {spec.model!r} is not served by this worker", type="UnknownModel", non_retryable=True)
        inp = LlmInput.model_validate(spec.input)
        await self.books.start_attempt(spec.job_id)
        # A retry (crashed worker, engine error) regenerates with the job's seed; tokens a client
        # already received are not sent again while the new attempt reproduces them.
        already = await self.bus.tokens_since_reset(spec.job_id) if activity.info().attempt > 1 else []
        sent = list(already)
        produced: list[str] = []
        finish_reason: str | None = None
        usage = Usage()
        ttft_ms: float | None = None
        checkpoint: list[object] = [0]
        engine = OpenAIEngine(entry.url, self.http)
        try:
            async with heartbeating(checkpoint):
                async for chunk in engine.stream(entry.engine_model, inp):
                    if chunk.usage:
                        usage = chunk.usage
                    finish_reason = chunk.finish_reason or finish_reason
                    if not chunk.text:
                        continue
                    if ttft_ms is None:
                        ttft_ms = (time.time() - started) * 1000
                    produced.append(chunk.text)
                    checkpoint[0] = len(produced)
                    await self._emit(spec.job_id, produced, sent)
        except EngineError as e:
            # 4xx: the engine rejects this input; retrying cannot help.
            raise ApplicationError(str(e), type="EngineRejected" if 400 <= e.status < 500 else "EngineError", non_retryable=400 <= e.status < 500) from e
        except httpx.TransportError as e:
            raise ApplicationError(f"engine unreachable: {e!r}", type="EngineUnavailable") from e
        if len(sent) > len(produced):
            # The retry ended before reproducing everything already streamed: start clean.
            await self._reset(spec.job_id, produced, sent)
        return LlmGeneration(
            text="".join(produced),
            finish_reason=finish_reason,
            usage=usage,
            timings=Timings(queue_ms=max(0.0, started * 1000 - spec.accepted_at_ms), ttft_ms=ttft_ms, total_ms=(time.time() - started) * 1000),
        )

    async def _emit(self, job_id: str, produced: list[str], sent: list[str]) -> None:
        i = len(produced) - 1
        if i < len(sent):
            if sent[i] == produced[i]:
                return  # already delivered by an earlier attempt
            await self._reset(job_id, produced, sent)
            return
        await self.bus.publish(job_id, "token", {"index": i, "text": produced[i]})
        sent.append(produced[i])

    async def _reset(self, job_id: str, produced: list[str], sent: list[str]) -> None:
        """The new attempt diverged from what clients saw: tell them to drop it, then resend."""
        await self.bus.publish(job_id, "reset", {"attempt": activity.info().attempt})
        sent.clear()
        for i, text in enumerate(produced):
            await self.bus.publish(job_id, "token", {"index": i, "text": text})
            sent.append(text)

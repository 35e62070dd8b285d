"""The LLM generation activity: stream tokens from the model's engines into the job's events.

Out of memory: an engine that answers OOM ends the attempt with a retryable ``EngineOutOfMemory``
(Temporal retries it with the LLM policy's exponential backoff); the OOMs per endpoint are kept
in the heartbeat details, so the next attempt knows them, and an endpoint that ran out of memory
``oom_switch_after`` times is passed over for the model's next one. Every endpoint sits behind its
circuit breaker: when all are open, the attempt fails with a retry delay of the time to the next probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common import metrics, tracing
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.breaker import BreakerBoard
from switchyard.common.catalog import CatalogHolder
from switchyard.common.contracts import JobSpec, LlmChoice, LlmGeneration, LlmInput, Timings, Usage
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.factory import engine_for
from switchyard.common.engines.fallback import Attempt, NoEndpointAnswered, first_endpoint_that_works
from switchyard.common.engines.oom import EngineOutOfMemory
from switchyard.common.model_registry import ModelEntry
from switchyard.common.request_log import CURRENT_REQUEST_ID
from switchyard.common.retry_jitter import backoff_at_least
from switchyard.common.temporal import heartbeating
from switchyard.worker_llm.publisher import TokenPublisher, resume_point


def job_seed(job_id: str, given: int | None, choice: int) -> int:
    """Every choice of a job has a fixed seed, so a retry reproduces what was streamed."""
    base = given if given is not None else int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") >> 1
    return (base + choice) % 2**31


class OomState:
    """Out-of-memory answers per endpoint position of this job's model, across its attempts (the
    activity's heartbeat details carry ``as_details()``; a retried attempt reads them back)."""

    def __init__(self, details: Any) -> None:
        ooms = details.get("ooms") if isinstance(details, dict) else None
        self.ooms: dict[str, int] = {str(k): int(v) for k, v in ooms.items()} if isinstance(ooms, dict) else {}

    def count(self, position: int) -> int:
        self.ooms[str(position)] = self.ooms.get(str(position), 0) + 1
        return self.ooms[str(position)]

    def passed_over(self, n_endpoints: int, switch_after: int) -> set[int]:
        """Endpoints with ``switch_after`` OOMs or more, unless that is every one (then all are tried again)."""
        over = {p for p in range(n_endpoints) if self.ooms.get(str(p), 0) >= switch_after}
        return over if len(over) < n_endpoints else set()

    def as_details(self) -> dict[str, Any]:
        return {"ooms": dict(self.ooms)}


class LlmActivities:
    def __init__(self, books: JobBookkeeping, catalog: CatalogHolder, http: httpx.AsyncClient, *,
                 breakers: BreakerBoard | None = None, oom_switch_after: int = 2) -> None:
        self.books = books
        self.catalog = catalog
        self.http = http
        self.breakers = breakers if breakers is not None else BreakerBoard(exclude=[asyncio.CancelledError])
        self.oom_switch_after = oom_switch_after

    def model(self, spec: JobSpec) -> ModelEntry | None:
        """The model as accepted (the job's catalog snapshot), else as the catalog declares it now."""
        if spec.model_spec and "llm" in spec.model_spec:
            return ModelEntry.model_validate(spec.model_spec["llm"])
        return self.catalog.current.registry.get(spec.model)

    @activity.defn(name="llm.generate")
    async def generate(self, spec: JobSpec) -> LlmGeneration:
        started = time.time()
        entry = self.model(spec)
        if entry is None or entry.domain != "llm" or entry.kind != "chat":
            raise ApplicationError(f"model {spec.model!r} is not served by this worker", type="UnknownModel", non_retryable=True)
        inp = LlmInput.model_validate(await self.books.job_input(spec))
        running_id = await self.books.start_attempt(spec, started)
        attempt = activity.info().attempt
        already, whole = resume_point(await self.books.bus.read_all(spec.job_id), attempt) if attempt > 1 else ({}, True)
        publisher = TokenPublisher(self.books.bus, spec.job_id, attempt, already, last_id=running_id)
        if not whole:
            await publisher.stream_lost()  # clients may hold tokens the stream lost: they drop them first
        first_token: list[float] = []
        previous = activity.info().heartbeat_details
        ooms = OomState(previous[0] if previous else None)
        checkpoint: list[object] = [ooms.as_details()]  # heartbeat details; replaced when an OOM is counted
        CURRENT_REQUEST_ID.set(spec.request_id)  # the engine calls send it (X-Request-Id; __main__'s httpx hook)
        # (start, end) of each engine stream: Timings.engine_ms, the platform's overhead being the rest.
        engine_spans: list[tuple[float, float]] = []
        generated: list[Usage] = []  # what the engines processed, also for a stream cut off midway
        try:
            async with heartbeating(checkpoint):
                results = await asyncio.gather(*(self._choice(entry, inp, spec, c, publisher, first_token, generated, engine_spans, ooms, checkpoint)
                                                 for c in range(inp.n)))
        finally:
            metrics.count_tokens(entry.name, max((u.prompt_tokens for u in generated), default=0), sum(u.completion_tokens for u in generated))
        await publisher.finish()
        usage = Usage(prompt_tokens=max(u.prompt_tokens for _, u, _ in results), completion_tokens=sum(u.completion_tokens for _, u, _ in results))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return LlmGeneration(
            choices=[c for c, _, _ in results],
            usage=usage,
            timings=Timings(queue_ms=max(0.0, started * 1000 - spec.accepted_at_ms), ttft_ms=(first_token[0] - started) * 1000 if first_token else None,
                            total_ms=(time.time() - started) * 1000,
                            engine_ms=(max(e for _, e in engine_spans) - min(s for s, _ in engine_spans)) * 1000 if engine_spans else None),
            endpoint=results[0][2],
        )

    async def _choice(self, entry: ModelEntry, inp: LlmInput, spec: JobSpec, choice: int, publisher: TokenPublisher, first_token: list[float],
                      generated: list[Usage], engine_spans: list[tuple[float, float]], ooms: OomState,
                      checkpoint: list[object]) -> tuple[LlmChoice, Usage, str]:
        """One choice, on the first endpoint that works; fall back only before any output."""

        async def generate_on(attempt: Attempt) -> tuple[LlmChoice, Usage]:
            engine = engine_for(attempt.endpoint, self.http)
            text: list[str] = []
            finish_reason: str | None = None
            usage = Usage()
            engine_started = time.time()
            try:
                async for chunk in engine.stream(inp, seed=job_seed(spec.job_id, inp.seed, choice), priority=spec.priority_key):
                    if chunk.usage:
                        usage = chunk.usage
                    finish_reason = chunk.finish_reason or finish_reason
                    if chunk.text:
                        if not first_token:
                            first_token.append(time.time())
                        text.append(chunk.text)
                        attempt.produced_output = True
                        await publisher.token(choice, chunk.text, chunk.logprobs)
            finally:  # counted however the stream ended (a chunk is a token when the engine does not say)
                engine_spans.append((engine_started, time.time()))
                generated.append(Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens or len(text)))
            if not usage.completion_tokens:
                usage.completion_tokens = len(text)
            return LlmChoice(index=choice, text="".join(text), finish_reason=finish_reason), usage

        async def traced_on(attempt: Attempt) -> tuple[LlmChoice, Usage]:
            """One endpoint attempt in a CLIENT span (traces on); the engine's request carries its traceparent."""
            e = attempt.endpoint
            with tracing.client_span(f"chat {entry.name}", e.url, {"gen_ai.operation.name": "chat", "gen_ai.request.model": entry.name,
                                                                   "switchyard.engine": e.engine, "switchyard.engine_model": e.engine_model}) as span:
                try:
                    out, usage = await generate_on(attempt)
                except EngineOutOfMemory:
                    n = ooms.count(entry.endpoints.index(e))
                    checkpoint[0] = ooms.as_details()
                    activity.heartbeat(*checkpoint)  # recorded before the attempt fails: the retry reads it
                    activity.logger.warning("engine out of memory", extra={"endpoint": e.url, "ooms": n, "switch_after": self.oom_switch_after})
                    raise
                if span is not None:
                    span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens})
                return out, usage

        try:
            (out, usage), endpoint = await first_endpoint_that_works(
                entry.name, entry.endpoints, traced_on, logger=activity.logger, count_running=True, breakers=self.breakers,
                skip=ooms.passed_over(len(entry.endpoints), self.oom_switch_after), oom_ends_attempt=True)
        except EngineError as e:
            raise ApplicationError(str(e), type=e.kind, non_retryable=not e.retryable) from e
        except NoEndpointAnswered as e:
            # Every circuit open: wait for the first probe, and at least the policy's backoff.
            delay = backoff_at_least(e.retry_after_s) if e.retry_after_s is not None else None
            raise ApplicationError(str(e), type=e.error.kind, next_retry_delay=delay) from e
        return out, usage, f"{endpoint.engine}:{endpoint.url}"

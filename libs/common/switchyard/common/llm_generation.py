"""One attempt of an LLM job's generation: each choice streamed from the first of the model's
endpoints that works (breakers, OOM counting, fallback before any output), its tokens published
into the job's events. Run by the worker's ``llm.generate`` activity, and by the API when it
starts a completion itself (switchyard.common.fast_start); neither retries on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from switchyard.common import metrics, tracing
from switchyard.common.breaker import BreakerBoard
from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus, LlmChoice, LlmGeneration, LlmInput, Timings, Usage
from switchyard.common.engines.factory import engine_for
from switchyard.common.engines.fallback import Attempt, first_endpoint_that_works
from switchyard.common.engines.oom import EngineOutOfMemory
from switchyard.common.model_registry import ModelEntry
from switchyard.common.token_publisher import TokenPublisher


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


def succeeded_outcome(spec: JobSpec, gen: LlmGeneration) -> JobOutcome:
    """The job's outcome from its generation (the workflow's, and the API's when it ran the job)."""
    return JobOutcome(
        job_id=spec.job_id,
        status=JobStatus.succeeded,
        result={"text": gen.choices[0].text, "finish_reason": gen.choices[0].finish_reason,
                "choices": [c.model_dump() for c in gen.choices], "endpoint": gen.endpoint},
        usage=gen.usage,
        timings=gen.timings,
    )


class Generation:
    """One attempt's engine work. ``on_oom`` is called after an OOM was counted in ``ooms`` (the
    activity heartbeats it, so the retry reads it); errors are raised as the fallback raises them
    (``EngineError``, ``NoEndpointAnswered``): the caller turns them into its own."""

    def __init__(self, entry: ModelEntry, inp: LlmInput, spec: JobSpec, publisher: TokenPublisher, *, http: httpx.AsyncClient,
                 breakers: BreakerBoard | None, ooms: OomState, oom_switch_after: int, on_oom: Callable[[], None] = lambda: None,
                 logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self.entry, self.inp, self.spec, self.publisher = entry, inp, spec, publisher
        self.http, self.breakers, self.ooms, self.oom_switch_after, self.on_oom, self.logger = http, breakers, ooms, oom_switch_after, on_oom, logger
        self.first_token: list[float] = []
        # (start, end) of each engine stream: Timings.engine_ms, the platform's overhead being the rest.
        self.engine_spans: list[tuple[float, float]] = []
        self.generated: list[Usage] = []  # what the engines processed, also for a stream cut off midway

    async def run(self, started: float) -> LlmGeneration:
        """Every choice, then the publisher's end; ``started``: the attempt's start (time.time())."""
        try:
            results = await asyncio.gather(*(self._choice(c) for c in range(self.inp.n)))
        finally:
            metrics.count_tokens(self.entry.name, max((u.prompt_tokens for u in self.generated), default=0), sum(u.completion_tokens for u in self.generated))
        await self.publisher.finish()
        usage = Usage(prompt_tokens=max(u.prompt_tokens for _, u, _ in results), completion_tokens=sum(u.completion_tokens for _, u, _ in results))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        spans = self.engine_spans
        return LlmGeneration(
            choices=[c for c, _, _ in results],
            usage=usage,
            timings=Timings(queue_ms=max(0.0, started * 1000 - self.spec.accepted_at_ms),
                            ttft_ms=(self.first_token[0] - started) * 1000 if self.first_token else None, total_ms=(time.time() - started) * 1000,
                            engine_ms=(max(e for _, e in spans) - min(s for s, _ in spans)) * 1000 if spans else None),
            endpoint=results[0][2],
        )

    async def _on(self, attempt: Attempt, choice: int) -> tuple[LlmChoice, Usage]:
        engine = engine_for(attempt.endpoint, self.http)
        text: list[str] = []
        finish_reason: str | None = None
        usage = Usage()
        engine_started = time.time()
        try:
            async for chunk in engine.stream(self.inp, seed=job_seed(self.spec.job_id, self.inp.seed, choice), priority=self.spec.priority_key):
                if chunk.usage:
                    usage = chunk.usage
                finish_reason = chunk.finish_reason or finish_reason
                if chunk.text:
                    if not self.first_token:
                        self.first_token.append(time.time())
                    text.append(chunk.text)
                    attempt.produced_output = True
                    await self.publisher.token(choice, chunk.text, chunk.logprobs)
        finally:  # counted however the stream ended (a chunk is a token when the engine does not say)
            self.engine_spans.append((engine_started, time.time()))
            self.generated.append(Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens or len(text)))
        if not usage.completion_tokens:
            usage.completion_tokens = len(text)
        return LlmChoice(index=choice, text="".join(text), finish_reason=finish_reason), usage

    async def _traced(self, attempt: Attempt, choice: int) -> tuple[LlmChoice, Usage]:
        """One endpoint attempt in a CLIENT span (traces on); the engine's request carries its traceparent."""
        e, name = attempt.endpoint, self.entry.name
        with tracing.client_span(f"chat {name}", e.url, {"gen_ai.operation.name": "chat", "gen_ai.request.model": name,
                                                         "switchyard.engine": e.engine, "switchyard.engine_model": e.engine_model}) as span:
            try:
                out, usage = await self._on(attempt, choice)
            except EngineOutOfMemory:
                n = self.ooms.count(self.entry.endpoints.index(e))
                self.on_oom()  # recorded before the attempt fails: the retry reads it
                self.logger.warning("engine out of memory", extra={"endpoint": e.url, "ooms": n, "switch_after": self.oom_switch_after})
                raise
            if span is not None:
                span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens})
            return out, usage

    async def _choice(self, choice: int) -> tuple[LlmChoice, Usage, str]:
        """One choice, on the first endpoint that works; fall back only before any output."""
        entry = self.entry
        (out, usage), endpoint = await first_endpoint_that_works(
            entry.name, entry.endpoints, lambda a: self._traced(a, choice), logger=self.logger, count_running=True, breakers=self.breakers,
            skip=self.ooms.passed_over(len(entry.endpoints), self.oom_switch_after), oom_ends_attempt=True)
        return out, usage, f"{endpoint.engine}:{endpoint.url}"

"""The LLM generation activity: stream tokens from the model's engines into the job's events
(switchyard.common.llm_generation), or adopt the run the API started itself (fast start).

Out of memory: an engine that answers OOM ends the attempt with a retryable ``EngineOutOfMemory``
(Temporal retries it with the LLM policy's exponential backoff); the OOMs per endpoint are kept
in the heartbeat details, so the next attempt knows them, and an endpoint that ran out of memory
``oom_switch_after`` times is passed over for the model's next one. Every endpoint sits behind its
circuit breaker: when all are open, the attempt fails with a retry delay of the time to the next probe.

Fast start (switchyard.common.fast_start): when the API already runs the job's first attempt, the
activity waits for the API's end record and returns its generation (or raises its error), while
heartbeating; when the API's lease lapses, it takes over, resuming from the job's events.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.breaker import BreakerBoard
from switchyard.common.catalog import CatalogHolder
from switchyard.common.contracts import JobSpec, JobStatus, LlmGeneration, LlmInput
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.fallback import NoEndpointAnswered
from switchyard.common.fast_start import FastStartKeys, RunEnd
from switchyard.common.llm_generation import Generation, OomState
from switchyard.common.model_registry import ModelEntry
from switchyard.common.request_log import CURRENT_REQUEST_ID
from switchyard.common.retry_jitter import backoff_at_least
from switchyard.common.temporal import heartbeating
from switchyard.common.token_publisher import TokenPublisher, resume_point

# After the API's run stopped for a cancel, how long the activity waits for its own cancellation
# before running the job itself (a cancel that never reached the workflow must not lose the job).
OWN_CANCEL_WAIT_S = 30.0


class LlmActivities:
    def __init__(self, books: JobBookkeeping, catalog: CatalogHolder, http: httpx.AsyncClient, *,
                 breakers: BreakerBoard | None = None, oom_switch_after: int = 2) -> None:
        self.books = books
        self.catalog = catalog
        self.http = http
        self.breakers = breakers if breakers is not None else BreakerBoard(exclude=[asyncio.CancelledError])
        self.oom_switch_after = oom_switch_after
        self.fast = FastStartKeys(books.bus.redis, books.bus.ttl_s)

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
        previous = activity.info().heartbeat_details
        ooms = OomState(previous[0] if previous else None)
        checkpoint: list[object] = [ooms.as_details()]  # heartbeat details; replaced when an OOM is counted
        async with heartbeating(checkpoint):
            adopted = await self._adopt(spec, ooms, checkpoint)
        if adopted is not None:
            return adopted
        return await self._run(spec, entry, started, ooms, checkpoint)

    async def _adopt(self, spec: JobSpec, ooms: OomState, checkpoint: list[object]) -> LlmGeneration | None:
        """The API's run's generation once it ended, or None when this attempt runs the job."""
        job_id, own_cancel_deadline = spec.job_id, None
        while True:
            kind, end = await self.fast.adopt(job_id)
            if kind == "none":
                return None
            if kind == "taken":
                activity.logger.info("taking over the API's run of the job", extra={"job_id": job_id})
                return None
            if kind == "running":
                try:
                    end = await self.fast.wait_end(job_id, 1.0)
                except asyncio.CancelledError:
                    await self._stop_api_run(job_id)
                    raise
            if end is not None:
                generation = await self._ended(spec, end, ooms, checkpoint)
                if generation is not None:
                    return generation
                kind = "cancelling"
            if kind == "cancelling":  # the API stopped for a cancel: this activity's own comes next
                own_cancel_deadline = own_cancel_deadline or time.monotonic() + OWN_CANCEL_WAIT_S
                if time.monotonic() > own_cancel_deadline:
                    activity.logger.warning("the API stopped the job for a cancel that never came; running it", extra={"job_id": job_id})
                    return None
                await asyncio.sleep(0.5)

    async def _ended(self, spec: JobSpec, end: RunEnd, ooms: OomState, checkpoint: list[object]) -> LlmGeneration | None:
        """The API's end record: its generation, its error raised as this attempt's, or None (cancelled)."""
        if end.outcome == "succeeded" and end.generation is not None:
            return end.generation
        if end.outcome == "cancelled":
            job = await self.books.store.get(uuid.UUID(spec.job_id))
            if job is None or JobStatus(job.status).terminal:  # cancelled before its workflow ran
                raise ApplicationError(f"job {spec.job_id} already ended", type="JobAlreadyEnded", non_retryable=True)
            return None
        err = end.error
        assert err is not None
        if end.ooms:
            ooms.ooms.update(OomState(end.ooms).ooms)
            checkpoint[0] = ooms.as_details()
            activity.heartbeat(*checkpoint)  # the retry reads it
        delay = backoff_at_least(err.retry_after_s) if err.retry_after_s is not None else None
        raise ApplicationError(err.message, type=err.type, non_retryable=not err.retryable, next_retry_delay=delay)

    async def _stop_api_run(self, job_id: str) -> None:
        """This activity was cancelled while the API runs the job: ask the API to stop, and wait
        (a little) until it did, so the engine is stopped when the cancel is recorded."""
        await self.fast.request_cancel(job_id)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and await self.fast.api_holds_lease(job_id):
            await asyncio.sleep(0.1)

    async def _run(self, spec: JobSpec, entry: ModelEntry, started: float, ooms: OomState, checkpoint: list[object]) -> LlmGeneration:
        """This attempt's generation."""
        inp = LlmInput.model_validate(await self.books.job_input(spec))
        running_id, attempt = await self.books.start_attempt(spec, started)
        already, whole = resume_point(await self.books.bus.read_all(spec.job_id), attempt) if attempt > 1 else ({}, True)
        publisher = TokenPublisher(self.books.bus, spec.job_id, attempt, already, last_id=running_id)
        if not whole:
            await publisher.stream_lost()  # clients may hold tokens the stream lost: they drop them first
        CURRENT_REQUEST_ID.set(spec.request_id)  # the engine calls send it (X-Request-Id; __main__'s httpx hook)

        def on_oom() -> None:
            checkpoint[0] = ooms.as_details()
            activity.heartbeat(*checkpoint)

        generation = Generation(entry, inp, spec, publisher, http=self.http, breakers=self.breakers, ooms=ooms,
                                oom_switch_after=self.oom_switch_after, on_oom=on_oom, logger=activity.logger)
        try:
            async with heartbeating(checkpoint):
                return await generation.run(started)
        except EngineError as e:
            raise ApplicationError(str(e), type=e.kind, non_retryable=not e.retryable) from e
        except NoEndpointAnswered as e:
            # Every circuit open: wait for the first probe, and at least the policy's backoff.
            delay = backoff_at_least(e.retry_after_s) if e.retry_after_s is not None else None
            raise ApplicationError(str(e), type=e.error.kind, next_retry_delay=delay) from e

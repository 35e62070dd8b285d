"""Activities every domain worker registers: persist job state and publish its events."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common import metrics
from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.db.store import JobStore, engine_input
from switchyard.common.events import EventBus, JobEnd
from switchyard.common.payload_codec import KeyRing, sealed_result_context
from switchyard.common.pii import PiiGuard
from switchyard.common.quotas import Backlog, Quotas
from switchyard.common.request_log import endpoint_of
from switchyard.common.shadow.canary import CanaryOutcomes


class JobBookkeeping:
    def __init__(self, store: JobStore, bus: EventBus, keys: KeyRing, pii: PiiGuard | None = None,
                 model_names: Callable[[], Collection[str]] = tuple) -> None:
        self.store = store
        self.bus = bus
        # Redacts the texts of results before they are stored (LLM worker; vision results are labels);
        # the catalog's model names are kept in error messages (no one's data; the NER model reads
        # some as places).
        self.pii = pii
        self.model_names = model_names
        # Opens the sealed input of a job too large for Temporal (claim check).
        self.keys = keys
        # Quota counters the job's end settles (Redis, as the API's): its token reservation and its
        # place in the model's backlog (namespaced by the job store's database, as the API's).
        self.quotas = Quotas(bus.redis)
        self.backlog = Backlog(bus.redis, store.engine.url.database or "default")
        # Outcomes of jobs a canary ran on its candidate (namespaced as the API's).
        self.canary = CanaryOutcomes(bus.redis, store.engine.url.database or "default")

    async def job_input(self, spec: JobSpec) -> dict[str, Any]:
        """The job's input: inline in the spec, or (too large for Temporal) the row's sealed input."""
        if spec.input is not None:
            return spec.input
        job = await self.store.get(uuid.UUID(spec.job_id))
        if job is None:
            raise ApplicationError(f"job {spec.job_id} not found", type="JobNotFound", non_retryable=True)
        return engine_input(job, self.keys)

    async def start_attempt(self, spec: JobSpec, started_s: float) -> tuple[str, int]:
        """Record that an attempt started (status running, one more attempt) and tell the clients; the
        first attempt's start (``started_s``, the activity's) ends the job's queue time. Returns the id
        of the ``running`` event (the attempt's first event: its publishers append after it) and the
        attempt's number: attempts started so far, whoever ran them (Temporal's count, and the API's
        run of a fast-started completion: switchyard.common.fast_start).

        A job that already ended (cancelled before its workflow ran) must not run at all.
        """
        job_id = spec.job_id
        attempt = await self.store.mark_running(job_id)
        if attempt is None:
            raise ApplicationError(f"job {job_id} already ended", type="JobAlreadyEnded", non_retryable=True)
        if attempt == 1:
            metrics.observe_queue_time(spec.domain, spec, started_s)
        return await self.bus.publish(job_id, "status", {"status": JobStatus.running.value, "attempt": attempt}), attempt

    async def stored_outcome(self, outcome: JobOutcome) -> tuple[JobOutcome, bytes | None]:
        """What the job's row keeps: result and error texts redacted, whatever the model's policy
        (an answer can repeat the caller's data under ``pass``, or name people on its own), and the
        engine's answer sealed (encrypted), which only the job's tenant reads back. The ``result``
        event keeps the engine's answer for the client that is waiting for it."""
        if self.pii is None or (outcome.result is None and outcome.error is None):
            return outcome, None
        error = outcome.error
        if error is not None:
            error = error.model_copy(update={"message": (await self.pii.redact_texts([error.message], keep=self.model_names()))[0][0]})
        redacted = await self.pii.redact_llm_result(outcome.result)
        sealed = None if redacted == outcome.result else self.keys.seal(outcome.result, sealed_result_context(outcome.job_id))
        return outcome.model_copy(update={"result": redacted, "error": error}), sealed

    async def canary_outcome(self, model_spec: dict[str, Any] | None, outcome: JobOutcome) -> None:
        """A job a canary ran on its candidate (switchyard.common.shadow.canary): its end (failed is
        an error; a cancel is nobody's) and time to first token, for the automatic rollback."""
        canary = (model_spec or {}).get("canary")
        if not canary or outcome.status is JobStatus.cancelled:
            return
        t = outcome.timings
        latency_ms = (t.ttft_ms if t.ttft_ms is not None else t.total_ms) if t is not None else None
        await self.canary.noted(canary["model"], canary["candidate"], outcome.status is JobStatus.succeeded, latency_ms or 0.0, float(canary["window_s"]))

    @activity.defn(name="job.finish")
    async def finish(self, outcome: JobOutcome) -> None:
        await self.record_end(outcome)

    async def record_end(self, outcome: JobOutcome) -> Job | None:
        """``job.finish``; returns the job's row as it ended (None if it is gone).

        Persist the final state first, then publish: a client that sees the end can read it.
        Before the end is published, the job's quotas are settled (both idempotent, so also when it had
        already ended): tokens it did not use go back to its key, its backlog place is freed.

        The end is published whenever the stream lacks it, not only by the attempt that wrote the
        row: a retry after a failed publish (Redis down between the row and the stream) sees a
        finished row and still publishes the end, once (``EventBus.ensure_end``)."""
        finished = await self.store.finish(*await self.stored_outcome(outcome))
        await self.quotas.settle(outcome.job_id, outcome.usage.total_tokens if outcome.usage else 0)
        job = finished or await self.store.get(uuid.UUID(outcome.job_id))  # ended before: as it ended then
        if job is None:
            return None
        await self.backlog.release(job.model, outcome.job_id)
        if finished is not None:
            metrics.JOBS_FINISHED.labels(domain=job.domain, model=job.model, outcome=outcome.status.value).inc()
            await self.canary_outcome(job.model_spec, outcome)
        if job.purged_at is not None:
            return job  # erased meanwhile (purge): a stream published now would bring back what was erased
        if job.status == outcome.status.value:
            end = JobEnd(status=outcome.status, result=outcome.result, error=outcome.error.model_dump() if outcome.error else None,
                         usage=outcome.usage.model_dump() if outcome.usage else None, timings=outcome.timings.model_dump() if outcome.timings else None,
                         attempts=job.attempts, endpoint=endpoint_of(outcome.result, job.model_spec))
        else:  # it had ended otherwise (e.g. cancelled before it ran): that end is the one to tell
            end = JobEnd(status=JobStatus(job.status), error=job.error)
        await self.bus.ensure_end(outcome.job_id, end)
        return job

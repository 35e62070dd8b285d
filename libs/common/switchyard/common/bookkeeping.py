"""Activities every domain worker registers: persist job state and publish its events."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus
from switchyard.common.db.store import JobStore
from switchyard.common.events import EventBus


class JobBookkeeping:
    def __init__(self, store: JobStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus

    async def job_input(self, spec: JobSpec) -> dict[str, Any]:
        """The job's input: inline in the spec, or (too large for Temporal) from the job's row."""
        if spec.input is not None:
            return spec.input
        job = await self.store.get(uuid.UUID(spec.job_id))
        if job is None:
            raise ApplicationError(f"job {spec.job_id} not found", type="JobNotFound", non_retryable=True)
        return dict(job.input)

    async def start_attempt(self, job_id: str) -> None:
        """Record that an attempt started (status running, attempt number) and tell the clients.

        A job that already ended (cancelled before its workflow ran) must not run at all.
        """
        attempt = activity.info().attempt
        if not await self.store.mark_running(job_id, attempt):
            raise ApplicationError(f"job {job_id} already ended", type="JobAlreadyEnded", non_retryable=True)
        await self.bus.publish(job_id, "status", {"status": JobStatus.running.value, "attempt": attempt})

    @activity.defn(name="job.finish")
    async def finish(self, outcome: JobOutcome) -> None:
        """Persist the final state first, then publish: a client that sees the end can read it."""
        if not await self.store.finish(outcome):
            return  # already ended (e.g. cancelled before it ran): its end was published then
        if outcome.status is JobStatus.succeeded:
            await self.bus.publish(outcome.job_id, "result", {"result": outcome.result, "usage": outcome.usage.model_dump() if outcome.usage else None})
        payload: dict[str, object] = {"status": outcome.status.value}
        if outcome.error:
            payload["error"] = outcome.error.model_dump()
        await self.bus.publish(outcome.job_id, "status", payload)

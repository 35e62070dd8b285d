"""Response models of the job API."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import BaseModel

from switchyard.common.contracts import JobError, JobStatus, Timings, Usage
from switchyard.common.db.models import Job
from switchyard.common.keys import Principal
from switchyard.common.payload_codec import KeyRing, PayloadKeyError, sealed_result_context

log = logging.getLogger("switchyard.api.jobs")


class JobLinks(BaseModel):
    self: str
    events: str
    ws: str


class JobView(BaseModel):
    id: str
    domain: str
    model: str
    status: JobStatus
    priority: int
    attempts: int
    metadata: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    usage: Usage | None
    timings: Timings | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # The X-Request-Id of the request that created the job (carried to the worker and engine).
    request_id: str | None = None
    # Set once retention or DELETE ?purge=true erased the job's content (input, result, metadata
    # values, error message, events, Temporal history); what is left is its accounting.
    purged_at: dt.datetime | None = None
    links: JobLinks

    @classmethod
    def of(cls, job: Job, keys: KeyRing, reader: Principal) -> JobView:
        """The job as ``reader`` sees it: its own tenant gets the engine's answer (unsealed); anyone
        else (an admin) the row's PII-redacted copy."""
        base = f"/v1/jobs/{job.id}"
        result = job.result
        if job.result_sealed is not None and reader.tenant == job.tenant:
            try:
                result = keys.unseal(job.result_sealed, sealed_result_context(job.id))
            except PayloadKeyError as e:  # a worker sealed it with a key this process lacks: rotation half done
                log.error("a sealed result could not be opened; answering its redacted copy", extra={"fields": {"job_id": str(job.id), "error": str(e)}})
        return cls(
            id=str(job.id), domain=job.domain, model=job.model, status=JobStatus(job.status), priority=job.priority,
            attempts=job.attempts, metadata=job.metadata_ or {}, result=result,
            error=JobError.model_validate(job.error) if job.error else None,
            usage=Usage.model_validate(job.usage) if job.usage else None,
            timings=_timings(job.timings),
            request_id=job.request_id,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, purged_at=job.purged_at,
            links=JobLinks(self=base, events=f"{base}/events", ws=f"{base}/ws"),
        )


def _timings(stored: dict[str, Any] | None) -> Timings | None:
    """The job's timings, with the platform's overhead (total minus engine) where both are known."""
    if not stored:
        return None
    t = Timings.model_validate(stored)
    if t.overhead_ms is None and t.total_ms is not None and t.engine_ms is not None:
        t.overhead_ms = max(0.0, t.total_ms - t.engine_ms)
    return t


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    links: JobLinks


class JobPage(BaseModel):
    data: list[JobView]
    next_cursor: str | None

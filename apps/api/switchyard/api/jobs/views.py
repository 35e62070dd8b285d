"""Response models of the job API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from switchyard.common.contracts import JobError, JobStatus, Timings, Usage
from switchyard.common.db.models import Job


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
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> JobView:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=str(job.id), domain=job.domain, model=job.model, status=JobStatus(job.status), priority=job.priority,
            attempts=job.attempts, metadata=job.metadata_ or {}, result=job.result,
            error=JobError.model_validate(job.error) if job.error else None,
            usage=Usage.model_validate(job.usage) if job.usage else None,
            timings=Timings.model_validate(job.timings) if job.timings else None,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            links=JobLinks(self=base, events=f"{base}/events", ws=f"{base}/ws"),
        )


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    links: JobLinks


class JobPage(BaseModel):
    data: list[JobView]
    next_cursor: str | None

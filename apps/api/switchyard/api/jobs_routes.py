"""``/v1/jobs``: submit, read, list and cancel jobs (the durable lane)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Response
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from switchyard.api.deps import Res
from switchyard.api.errors import ApiError
from switchyard.api.jobs_views import JobAccepted, JobPage, JobView
from switchyard.common.contracts import JobCreate, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.priority import PriorityValue, priority_key

log = logging.getLogger("switchyard.api.jobs")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
RPC_TIMEOUT = dt.timedelta(seconds=5)


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id") from None


async def load_job(res: Res, job_id: str) -> Job:
    job = await res.store.get(parse_job_id(job_id))
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id")
    return job


def _header_priority(value: str | None) -> PriorityValue | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("high", "normal", "low"):
        return v  # type: ignore[return-value]
    if v.isdigit() and 1 <= int(v) <= 5:
        return int(v)
    raise ApiError(422, "invalid_priority", "X-Priority must be 1..5 or high/normal/low", param="X-Priority")


@router.post("", status_code=202, response_model=JobAccepted)
async def submit_job(
    res: Res,
    response: Response,
    job: Annotated[JobCreate, Body()],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    x_priority: Annotated[str | None, Header()] = None,
) -> JobAccepted:
    entry = res.registry.get(job.model)
    if entry is None or entry.domain != job.domain:
        raise ApiError(404, "model_not_found", f"model {job.model!r} is not served for domain {job.domain!r}", param="model")
    prio = priority_key(job.priority if job.priority is not None else _header_priority(x_priority))
    body = job.model_dump(mode="json")
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    job_id = uuid.uuid4()
    t_db = time.perf_counter()
    row, created = await res.store.create(
        {"id": job_id, "domain": job.domain, "model": job.model, "status": JobStatus.queued.value, "priority": prio,
         "input": body["input"], "metadata_": job.metadata, "idempotency_key": idempotency_key, "request_hash": request_hash}
    )
    links = JobView.of(row).links
    response.headers["Location"] = links.self
    if not created:
        if row.request_hash != request_hash:
            raise ApiError(422, "idempotency_key_reused", "Idempotency-Key was already used with a different request", param="Idempotency-Key")
        response.headers["Idempotent-Replayed"] = "true"
        return JobAccepted(id=str(row.id), status=JobStatus(row.status), links=links)
    res.dispatcher.dispatch_soon(row)
    # Where the submission time went (W3C Server-Timing; browsers and load tools show it).
    response.headers["Server-Timing"] = f"db;dur={(time.perf_counter() - t_db) * 1000:.2f}"
    return JobAccepted(id=str(job_id), status=JobStatus.queued, links=links)


@router.get("/{job_id}", response_model=JobView)
async def get_job(res: Res, job_id: str) -> JobView:
    return JobView.of(await load_job(res, job_id))


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        created, jid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return dt.datetime.fromisoformat(created), uuid.UUID(jid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned", param="cursor") from None


@router.get("", response_model=JobPage)
async def list_jobs(
    res: Res,
    status: JobStatus | None = None,
    domain: Literal["llm", "vision", "recsys"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    rows = await res.store.page(status=status.value if status else None, domain=domain, limit=limit + 1, before=_decode_cursor(cursor) if cursor else None)
    page = rows[:limit]
    return JobPage(data=[JobView.of(j) for j in page], next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None)


@router.delete("/{job_id}", status_code=202, response_model=JobView)
async def cancel_job(res: Res, job_id: str) -> JobView:
    """Request cancellation: the workflow stops the engine request and records ``cancelled``."""
    job = await load_job(res, job_id)
    if JobStatus(job.status).terminal:
        raise ApiError(409, "job_finished", f"job already {job.status}", param="job_id")
    if await res.store.cancel_undispatched(job.id):
        # Accepted but its workflow never started (orchestrator slow or down): end it here. If the
        # outbox starts the workflow anyway, the activity finds the job ended and does nothing.
        await res.bus.publish(str(job.id), "status", {"status": JobStatus.cancelled.value})
        return JobView.of(await load_job(res, job_id))
    handle = res.temporal.get_workflow_handle(str(job.id))
    try:
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        raise ApiError(503, "orchestrator_unavailable", "could not reach the orchestrator; retry", headers={"Retry-After": "1"}) from e
    return JobView.of(job)

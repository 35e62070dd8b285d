"""``/v1/jobs``: submit, read, list and cancel jobs (the durable lane)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response

from switchyard.api import request_log
from switchyard.api.auth import Caller, require
from switchyard.api.deps import Res
from switchyard.api.errors import ApiError
from switchyard.api.jobs.service import accept_job, cancel_job, find_model, header_priority, load_job, purge_job
from switchyard.api.jobs.views import JobAccepted, JobPage, JobView
from switchyard.api.limits import admit_job, llm_cost
from switchyard.api.privacy import screen_llm_input, stored_metadata
from switchyard.common.contracts import JobCreate, JobStatus, LlmInput, RecsysInput, VisionInput
from switchyard.common.db.models import Job
from switchyard.common.model_registry import ModelEntry
from switchyard.common.priority import capped_priority
from switchyard.common.request_log import PARAM_KEYS, safe_params

# The model kind each V2 job domain needs (LLM jobs: any LLM model).
KINDS = {"vision": "classifier", "recsys": "ranker"}

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require("jobs"))])


@router.post("", status_code=202, response_model=JobAccepted)
async def submit_job(
    res: Res,
    caller: Caller,
    request: Request,
    response: Response,
    job: Annotated[JobCreate, Body()],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    x_priority: Annotated[str | None, Header()] = None,
) -> JobAccepted:
    # Vision jobs send images: the model must be an image classifier; recsys jobs users: a ranker
    # (switchyard.common.v2.config).
    model = find_model(res, job.model, job.domain, KINDS.get(job.domain))
    # LLM text goes through the model's PII policy: the engine gets `inp`, the row `stored_input`.
    inp, stored_input = job.input.model_dump(mode="json"), None
    if isinstance(model, ModelEntry):
        screened = await screen_llm_input(res, model, inp, status=422, param="input.messages" if inp.get("messages") else "input.prompt")
        inp, stored_input = screened.engine, screened.stored
    metadata = await stored_metadata(res, job.metadata)
    # The key's tier caps the priority (and is the default).
    prio = capped_priority(job.priority if job.priority is not None else header_priority(x_priority), caller.tier)
    # LLM work reserves the caller's tokens per minute; every job takes a place in its model's backlog.
    admission = await admit_job(res, caller, request, job.model, llm_cost(job.input) if isinstance(job.input, LlmInput) else None)
    t_db = time.perf_counter()
    try:
        row, created = await accept_job(res, tenant=caller.tenant, domain=job.domain, model=job.model, input=inp, stored_input=stored_input,
                                        priority=prio, metadata=metadata, idempotency_key=idempotency_key, job_id=admission.job_id)
    except BaseException:
        await admission.undo()
        raise
    if not created:  # the replayed job holds its own place and reservation
        await admission.undo()
    rec = request_log.current()
    rec.outcome = "accepted" if created else "replayed"
    rec.params = safe_params(job.input.model_dump(include=set(PARAM_KEYS) | {"stop"}))
    if isinstance(job.input, VisionInput):
        rec.items = len(job.input.images)
    elif isinstance(job.input, RecsysInput):
        rec.params = {"users": len(job.input.users), "k": job.input.k, "exclude_seen": job.input.exclude_seen,
                      "candidates": len(job.input.candidates) if job.input.candidates is not None else 0}
    links = JobView.of(row, res.payload_keys, caller).links
    response.headers["Location"] = links.self
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    # Where the submission time went (W3C Server-Timing; browsers and load tools show it).
    response.headers["Server-Timing"] = f"db;dur={(time.perf_counter() - t_db) * 1000:.2f}"
    return JobAccepted(id=str(row.id), status=JobStatus(row.status), links=links)


@router.get("/{job_id}", response_model=JobView)
async def get_job(res: Res, caller: Caller, job_id: str) -> JobView:
    job = await load_job(res, job_id, caller)
    request_log.current().job_id = str(job.id)  # in the log line; a lookup owns no job (its row has none)
    request_log.current().owns_job = False
    return JobView.of(job, res.payload_keys, caller)


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
    caller: Caller,
    status: JobStatus | None = None,
    domain: Literal["llm", "vision", "recsys"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """The caller's tenant's jobs (an admin key: every tenant's), newest first."""
    rows = await res.store.page(status=status.value if status else None, domain=domain, limit=limit + 1, before=_decode_cursor(cursor) if cursor else None,
                                tenant=None if caller.is_admin else caller.tenant)
    page = rows[:limit]
    return JobPage(data=[JobView.of(j, res.payload_keys, caller) for j in page], next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None)


@router.delete("/{job_id}", status_code=202, response_model=JobView)
async def delete_job(res: Res, caller: Caller, response: Response, job_id: str,
                     purge: Annotated[bool, Query(description="also erase the job's data now: input, result, events, history")] = False) -> JobView:
    """Request cancellation: the workflow stops the engine request and records ``cancelled`` (202).

    ``?purge=true``: cancel it if it still runs, then erase its data at once, as retention would
    (docs/security.md); 200 with what is left of it (``purged_at`` set)."""
    job = await load_job(res, job_id, caller)
    if purge:
        await purge_job(res, job)
        response.status_code = 200
        return JobView.of(await load_job(res, job_id, caller), res.payload_keys, caller)
    if not await cancel_job(res, job):
        raise ApiError(409, "job_finished", f"job already {job.status}", param="job_id")
    return JobView.of(await load_job(res, job_id, caller), res.payload_keys, caller)

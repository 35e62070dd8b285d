"""Loading, accepting and cancelling jobs: shared by the job API and the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.common.contracts import JobStatus
from switchyard.common.db.models import Job
from switchyard.common.keys import Principal
from switchyard.common.model_registry import ModelEntry
from switchyard.common.priority import PriorityValue
from switchyard.common.v2.config import V2Model

RPC_TIMEOUT = dt.timedelta(seconds=5)
# The cancel of a client that went away is retried this long (an LLM attempt's own time limit).
ABANDONED_CANCEL_RETRY_S = 15 * 60

log = logging.getLogger("switchyard.api.jobs")


def header_priority(value: str | None) -> PriorityValue | None:
    """``X-Priority``: 1..5 or high/normal/low."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("high", "normal", "low"):
        return v  # type: ignore[return-value]
    if v.isdigit() and 1 <= int(v) <= 5:
        return int(v)
    raise ApiError(422, "invalid_priority", "X-Priority must be 1..5 or high/normal/low", param="X-Priority")


def find_model(res: Resources, name: str, domain: str, kind: str | None = None) -> ModelEntry | V2Model:
    """The catalog's model for new work of this domain (and kind), or 404."""
    m = res.catalog.current.model(name)
    if m is None or m.domain != domain or (kind is not None and m.kind != kind):
        what = f"{kind} model" if kind else f"model for domain {domain!r}"
        raise ApiError(404, "model_not_found", f"The model {name!r} does not exist or is not a {what}", param="model")
    return m


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id") from None


async def load_job(res: Resources, job_id: str, caller: Principal) -> Job:
    """The job's row, or 404; another tenant's job is a 404 too (unless the caller is an admin)."""
    job = await res.store.get(parse_job_id(job_id))
    if job is None or not caller.sees(job.tenant):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id")
    return job


async def admit(res: Resources, model: str) -> None:
    """Refuse new work for a model whose backlog is full (429 + Retry-After), instead of queueing forever."""
    if await res.store.pending(model) >= res.settings.max_pending_per_model:
        raise ApiError(429, "overloaded", f"too many pending requests for {model!r}; retry shortly", headers={"Retry-After": "1"})


async def accept_job(res: Resources, *, tenant: str, domain: str, model: str, input: dict[str, Any], priority: int, metadata: dict[str, str],
                     idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Commit the job row (the caller's tenant's) and hand it to the outbox; returns (job, created).
    An idempotency key is the tenant's own: another tenant's same key is another job."""
    body = {"domain": domain, "model": model, "input": input, "priority": priority, "metadata": metadata}
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    row, created = await res.store.create(
        {"id": uuid.uuid4(), "tenant": tenant, "domain": domain, "model": model, "status": JobStatus.queued.value, "priority": priority,
         "input": input, "model_spec": res.catalog.current.snapshot(model), "metadata_": metadata, "idempotency_key": idempotency_key, "request_hash": request_hash}
    )
    if created:
        res.dispatcher.dispatch_soon(row)
    elif row.request_hash != request_hash:
        raise ApiError(422, "idempotency_key_reused", "Idempotency-Key was already used with a different request", param="Idempotency-Key")
    return row, created


async def cancel_job(res: Resources, job: Job) -> bool:
    """Stop a job: its workflow cancels the engine request and records ``cancelled``.

    Returns False if it had already ended.
    """
    if JobStatus(job.status).terminal:
        return False
    if await res.store.cancel_undispatched(job.id):
        # Accepted but its workflow never started (orchestrator slow or down): end it here. If the
        # outbox starts the workflow anyway, the activity finds the job ended and does nothing.
        await res.bus.publish(str(job.id), "status", {"status": JobStatus.cancelled.value})
        return True
    handle = res.temporal.get_workflow_handle(str(job.id))
    try:
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        raise ApiError(503, "orchestrator_unavailable", "could not reach the orchestrator; retry", headers={"Retry-After": "1"}) from e
    return True


async def cancel_abandoned(res: Resources, job: Job) -> None:
    """Cancel the job of a client that went away, in the background, retrying until it is through.

    No client is left to retry, so a cancel that fails once (an orchestrator RPC timing out on a
    busy machine, a database blip) must not be dropped: the engine would generate for no one.
    """
    deadline, delay, attempt = time.monotonic() + ABANDONED_CANCEL_RETRY_S, 0.2, 0
    while True:
        try:
            # After a failure, re-read the job: one that ended meanwhile needs no cancel.
            await cancel_job(res, job if attempt == 0 else (await res.store.get(job.id) or job))
            return
        except Exception as e:
            attempt += 1
            fields = {"job_id": str(job.id), "attempt": attempt, "error": repr(e)}
            if time.monotonic() + delay > deadline:
                log.error("could not cancel the job of a client that went away; giving up", extra={"fields": fields})
                return
            log.warning("could not cancel the job of a client that went away; retrying", extra={"fields": fields})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)

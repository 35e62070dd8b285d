"""Loading, accepting and cancelling jobs: shared by the job API and the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from switchyard.api import request_log
from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.common.contracts import JobOutcome, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.events import JobEnd
from switchyard.common.keys import Principal
from switchyard.common.metrics import model_label
from switchyard.common.model_registry import ModelEntry
from switchyard.common.payload_codec import sealed_input_context
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
    request_log.current().model = model_label(name, m is not None)  # a name the catalog lacks is "unknown" (client text)
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


async def admit(res: Resources, model: str, job_id: uuid.UUID) -> None:
    """A place for the job in its model's backlog, or 429 + Retry-After when it is full (instead of
    queueing forever). Atomic in Redis (switchyard.common.quotas.Backlog): concurrent submissions
    cannot overfill it. The job's end (or its cancel before dispatch) gives the place back."""
    if not await res.backlog.admit(model, str(job_id), res.settings.max_pending_per_model):
        raise ApiError(429, "overloaded", f"too many pending requests for {model!r}; retry shortly", headers={"Retry-After": "1"})


async def accept_job(res: Resources, *, tenant: str, domain: str, model: str, input: dict[str, Any], priority: int, metadata: dict[str, str],
                     idempotency_key: str | None = None, stored_input: dict[str, Any] | None = None,
                     job_id: uuid.UUID | None = None, request_family: str = "jobs", model_spec: dict[str, Any] | None = None,
                     dispatch: bool = True) -> tuple[Job, bool]:
    """Commit the job row (the caller's tenant's) and hand it to the outbox; returns (job, created).
    ``input`` is what the engine gets; ``stored_input`` (PII redacted) is what the row keeps readable
    (default: ``input``). An idempotency key is the tenant's own: another tenant's same key is another job.
    The request's record (switchyard.api.request_log) gets the job; the row, the request's id and
    family (``jobs`` or ``openai``), which the worker carries to the engine. ``model_spec``: the
    catalog snapshot the job runs on, when not the model's own (a canary's candidate). ``dispatch``:
    False when the caller dispatches the new job itself (after a fast start, openai.admission)."""
    rec = request_log.current()
    body = {"domain": domain, "model": model, "input": input, "priority": priority, "metadata": metadata}
    # Keyed (the server's pepper): a plain hash of the raw input would let a guess of it be confirmed.
    request_hash = hmac.new(res.settings.key_pepper.get_secret_value().encode(), json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()
    row_id = job_id or uuid.uuid4()
    row, created = await res.store.create(
        {"id": row_id, "tenant": tenant, "domain": domain, "model": model, "status": JobStatus.queued.value, "priority": priority,
         "input": input if stored_input is None else stored_input, "model_spec": model_spec or res.catalog.current.snapshot(model), "metadata_": metadata, "idempotency_key": idempotency_key, "request_hash": request_hash,
         "request_id": rec.request_id or None, "request_family": request_family,
         # The engine's input, encrypted, where the readable copy is not it (PII passed to the engine
         # under the `pass` policy): what the outbox and the claim check hand the engine then.
         "input_sealed": None if stored_input is None or stored_input == input else res.payload_keys.seal(input, sealed_input_context(row_id))}
    )
    rec.job_id, rec.owns_job, rec.priority = str(row.id), created, row.priority
    if created and dispatch:
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
    if job.domain == "llm":  # a run the API started (fast start): stopped here at once, elsewhere at its next renewal
        await res.fast_starts.keys.request_cancel(str(job.id))
        res.fast_starts.cancel(str(job.id))
    if await res.store.cancel_undispatched(job.id, running=job.domain == "llm"):
        # Accepted but its workflow never started (orchestrator slow or down, or a completion the API
        # runs itself, asked to stop above): end it here. If the outbox starts the workflow anyway,
        # the activity finds the job ended and does nothing.
        await res.backlog.release(job.model, str(job.id))
        await res.quotas.settle(str(job.id), 0)  # it used no tokens
        await res.bus.ensure_end(str(job.id), JobEnd(status=JobStatus.cancelled))
        return True
    handle = res.temporal.get_workflow_handle(str(job.id))
    try:
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            await handle.cancel(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND and job.domain == "llm":
            return False  # no workflow, and not undispatched: a run the API started ended meanwhile (its row holds the end)
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


# DELETE ?purge=true of a running job: how long its workflow gets to stop the engine and record the cancel.
PURGE_CANCEL_WAIT_S = 10.0


async def purge_job(res: Resources, job: Job) -> None:
    """Erase one job's data now (``DELETE /v1/jobs/{id}?purge=true``): its row's content, its event
    stream and its Temporal history (jobs/retention.py).

    A job still running is cancelled first, and its workflow given PURGE_CANCEL_WAIT_S to stop the
    engine request and record the end, so that nothing it publishes afterwards recreates what was
    erased; past that the job is ended here and its workflow terminated with its history.
    """
    job_id = str(job.id)
    if not JobStatus(job.status).terminal:
        await cancel_job(res, job)
        deadline = time.monotonic() + PURGE_CANCEL_WAIT_S
        handle = res.temporal.get_workflow_handle(job_id)
        try:
            while time.monotonic() < deadline and (await handle.describe(rpc_timeout=RPC_TIMEOUT)).status == WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(0.1)
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:  # never started (cancelled before dispatch): nothing to wait for
                raise ApiError(503, "orchestrator_unavailable", "could not reach the orchestrator; retry", headers={"Retry-After": "1"}) from e
        if await res.store.finish(JobOutcome(job_id=job_id, status=JobStatus.cancelled)):
            await res.backlog.release(job.model, job_id)
            await res.quotas.settle(job_id, 0)
            await res.bus.ensure_end(job_id, JobEnd(status=JobStatus.cancelled))
    try:
        await res.purger.purge(job.id)
    except RPCError as e:
        raise ApiError(503, "orchestrator_unavailable", "could not reach the orchestrator to delete the job's history; retry",
                       headers={"Retry-After": "1"}) from e

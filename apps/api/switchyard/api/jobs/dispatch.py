"""Transactional outbox between PostgreSQL and Temporal.

A job is accepted once its row is committed. Starting its workflow happens right after, off the
request path, so Temporal's latency tail (and its outages) never reach the client's ``202``. A
sweeper dispatches whatever was not confirmed (API crash, Temporal or Redis down) until it is.
Starting is idempotent: the workflow id is the job id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.common import Priority, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from switchyard.common import tracing
from switchyard.common.contracts import JobError, JobOutcome, JobSpec, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.db.store import JobStore, engine_input
from switchyard.common.events import EventBus, JobEnd
from switchyard.common.payload_codec import KeyRing, PayloadKeyError
from switchyard.common.queues import TASK_QUEUES, WORKFLOW_TYPES
from switchyard.common.quotas import Backlog, Quotas

log = logging.getLogger("switchyard.api.dispatch")


# Trace contexts of jobs whose immediate dispatch failed, kept for the sweeper's retry (in memory:
# a job swept by another process, or after a restart, starts a trace of its own).
MAX_CARRIED_TRACES = 10_000

# Inputs larger than this stay in the job's row (claim check): Temporal refuses payloads over ~2 MB
# and keeps every payload in the workflow's history.
INLINE_INPUT_MAX_BYTES = 128 * 1024


def spec_of(job: Job, keys: KeyRing) -> JobSpec:
    """The workflow's input, with the engine's input (the row's sealed one where there is one); the
    Temporal client's codec encrypts it on its way to the history."""
    engine = engine_input(job, keys)
    inline = len(json.dumps(engine, separators=(",", ":"))) <= INLINE_INPUT_MAX_BYTES
    return JobSpec(job_id=str(job.id), domain=job.domain, model=job.model, input=engine if inline else None, priority_key=job.priority,
                   accepted_at_ms=job.created_at.timestamp() * 1000 if job.created_at else time.time() * 1000, model_spec=job.model_spec,
                   request_id=job.request_id)


class Dispatcher:
    def __init__(self, store: JobStore, bus: EventBus, temporal: Client, keys: KeyRing, *, sweep_every_s: float = 1.0, grace_s: float = 2.0,
                 backlog: Backlog | None = None, reconcile_every_s: float = 10.0) -> None:
        self.store, self.bus, self.temporal, self.keys = store, bus, temporal, keys
        self.sweep_every_s, self.grace_s = sweep_every_s, grace_s
        # The per-model backlog (Redis): the sweeper also drops the ids of jobs that ended without
        # their removal (a worker lost mid-finish), so lost removals cannot leak capacity.
        self.backlog, self.reconcile_every_s = backlog, reconcile_every_s
        self.quotas = Quotas(bus.redis)  # a job that fails here gives its token reservation back
        self._inflight: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._traces: dict[str, tracing.TraceContext] = {}

    def dispatch_soon(self, job: Job) -> None:
        # The dispatch task copies the request's context: the workflow start (Temporal's tracing
        # interceptor) joins the request's trace, though it may run after the 202.
        tracing.annotate(**{"switchyard.job_id": str(job.id), "switchyard.model": job.model, "switchyard.domain": job.domain})
        self.background(self.dispatch(job))

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish even if the request that asked for it is gone."""
        task = asyncio.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def dispatch(self, job: Job) -> bool:
        """Publish ``queued`` (once) and start the workflow; True once the workflow exists."""
        job_id = str(job.id)
        try:
            # "queued" goes out before the workflow exists, so it is always the stream's first event.
            if not await self.bus.exists(job_id):
                await self.bus.publish(job_id, "status", {"status": JobStatus.queued.value})
            await self.temporal.start_workflow(
                WORKFLOW_TYPES[job.domain], spec_of(job, self.keys), id=job_id, task_queue=TASK_QUEUES[job.domain],
                # Within a priority level Temporal takes turns between fairness keys: one per tenant.
                priority=Priority(priority_key=job.priority, fairness_key=job.tenant), id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # an earlier try got through
        except RPCError as e:
            if e.status != RPCStatusCode.INVALID_ARGUMENT:
                log.warning("dispatch failed; the sweeper retries", extra={"fields": {"job_id": job_id, "error": repr(e)}})
                self._carry_trace(job_id)
                return False
            # Retrying cannot help (e.g. a payload over Temporal's limits): end the job, visibly.
            log.error("dispatch rejected; the job fails", extra={"fields": {"job_id": job_id, "error": repr(e)}})
            await self._fail(job, JobError(type="DispatchRejected", message=e.message))
        except PayloadKeyError as e:
            # The sealed input's key is gone (dropped from SWITCHYARD_PAYLOAD_KEYS too early): no retry
            # can run this job, and it must not block the sweeper's queue.
            log.error("sealed input unreadable; the job fails", extra={"fields": {"job_id": job_id, "error": str(e)}})
            await self._fail(job, JobError(type="SealedInputUnreadable", message=str(e)))
        except (RedisError, OSError) as e:
            log.warning("dispatch failed; the sweeper retries", extra={"fields": {"job_id": job_id, "error": repr(e)}})
            self._carry_trace(job_id)
            return False
        await self.store.mark_dispatched(job.id)
        return True

    def _carry_trace(self, job_id: str) -> None:
        ctx = tracing.current_context()
        if ctx is not None:
            self._traces[job_id] = ctx
            if len(self._traces) > MAX_CARRIED_TRACES:
                del self._traces[next(iter(self._traces))]  # the oldest

    async def _fail(self, job: Job, error: JobError) -> None:
        job_id = str(job.id)
        if self.backlog is not None:
            await self.backlog.release(job.model, job_id)
        await self.quotas.settle(job_id, 0)
        if await self.store.finish(JobOutcome(job_id=job_id, status=JobStatus.failed, error=error)):
            await self.bus.ensure_end(job_id, JobEnd(status=JobStatus.failed, error=error.model_dump()))

    async def sweep_once(self) -> int:
        jobs = await self.store.undispatched(self.grace_s, limit=200)
        for job in jobs:
            with tracing.resumed(self._traces.pop(str(job.id), None)):
                ok = await self.dispatch(job)
            if not ok:
                break  # the orchestrator is down: try again next round
        return len(jobs)

    async def reconcile_backlog(self) -> int:
        """Drop backlog ids of jobs that ended (or never got a row); how many were dropped."""
        if self.backlog is None:
            return 0
        members = await self.backlog.members()
        ids = [uuid.UUID(j) for entries in members.values() for j, _ in entries]
        statuses: dict[str, str] = {}
        for i in range(0, len(ids), 1000):
            statuses.update(await self.store.statuses(ids[i:i + 1000]))
        ended = [j for j, st in statuses.items() if JobStatus(st).terminal]
        dropped = await self.backlog.reconcile(members, ended, statuses.keys())
        if dropped:
            log.warning("backlog ids of ended jobs dropped", extra={"fields": {"dropped": dropped}})
        return dropped

    async def _sweep_forever(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            await asyncio.sleep(self.sweep_every_s)
            try:
                await self.sweep_once()
            except Exception:  # keep sweeping whatever one round hit (database restart...)
                log.exception("sweep failed")
            if time.monotonic() - last_reconcile >= self.reconcile_every_s:
                last_reconcile = time.monotonic()
                try:
                    await self.reconcile_backlog()
                except Exception:
                    log.exception("backlog reconcile failed")

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout_s)

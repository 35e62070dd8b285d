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
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.common import Priority, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from switchyard.common.contracts import JobError, JobOutcome, JobSpec, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.db.store import JobStore
from switchyard.common.events import EventBus
from switchyard.common.queues import TASK_QUEUES, WORKFLOW_TYPES

log = logging.getLogger("switchyard.api.dispatch")


# Inputs larger than this stay in the job's row (claim check): Temporal refuses payloads over ~2 MB
# and keeps every payload in the workflow's history.
INLINE_INPUT_MAX_BYTES = 128 * 1024


def spec_of(job: Job) -> JobSpec:
    inline = len(json.dumps(job.input, separators=(",", ":"))) <= INLINE_INPUT_MAX_BYTES
    return JobSpec(job_id=str(job.id), domain=job.domain, model=job.model, input=job.input if inline else None, priority_key=job.priority,
                   accepted_at_ms=job.created_at.timestamp() * 1000 if job.created_at else time.time() * 1000, model_spec=job.model_spec)


class Dispatcher:
    def __init__(self, store: JobStore, bus: EventBus, temporal: Client, *, sweep_every_s: float = 1.0, grace_s: float = 2.0) -> None:
        self.store, self.bus, self.temporal = store, bus, temporal
        self.sweep_every_s, self.grace_s = sweep_every_s, grace_s
        self._inflight: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def dispatch_soon(self, job: Job) -> None:
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
                WORKFLOW_TYPES[job.domain], spec_of(job), id=job_id, task_queue=TASK_QUEUES[job.domain],
                # Within a priority level Temporal takes turns between fairness keys: one per tenant.
                priority=Priority(priority_key=job.priority, fairness_key=job.tenant), id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # an earlier try got through
        except RPCError as e:
            if e.status != RPCStatusCode.INVALID_ARGUMENT:
                log.warning("dispatch failed; the sweeper retries", extra={"fields": {"job_id": job_id, "error": repr(e)}})
                return False
            # Retrying cannot help (e.g. a payload over Temporal's limits): end the job, visibly.
            log.error("dispatch rejected; the job fails", extra={"fields": {"job_id": job_id, "error": repr(e)}})
            outcome = JobOutcome(job_id=job_id, status=JobStatus.failed, error=JobError(type="DispatchRejected", message=e.message))
            if await self.store.finish(outcome):
                await self.bus.publish(job_id, "status", {"status": JobStatus.failed.value, "error": outcome.error.model_dump() if outcome.error else None})
        except (RedisError, OSError) as e:
            log.warning("dispatch failed; the sweeper retries", extra={"fields": {"job_id": job_id, "error": repr(e)}})
            return False
        await self.store.mark_dispatched(job.id)
        return True

    async def sweep_once(self) -> int:
        jobs = await self.store.undispatched(self.grace_s, limit=200)
        for job in jobs:
            if not await self.dispatch(job):
                break  # the orchestrator is down: try again next round
        return len(jobs)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            try:
                await self.sweep_once()
            except Exception:  # keep sweeping whatever one round hit (database restart...)
                log.exception("sweep failed")

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout_s)

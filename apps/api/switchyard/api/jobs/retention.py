"""Retention: erase what a job carried once it ended longer ago than ``SWITCHYARD_RETENTION_S``.

Every API process runs a purger (like the outbox's sweeper); PostgreSQL's ``SKIP LOCKED`` hands
each one its own batch. For each job it deletes the Redis event stream and the Temporal workflow
execution (its history, payloads encrypted or not), then erases the row's content and stamps
``purged_at``, in that order and in one transaction holding the rows: a process that dies midway
leaves the jobs to the next round. ``DELETE /v1/jobs/{id}?purge=true`` does the same for one job
at once (``Purger.purge``).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from switchyard.common.db.shadow_store import ShadowStore
from switchyard.common.db.store import JobStore, RequestStore
from switchyard.common.events import EventBus
from switchyard.common.periodic import Periodic

log = logging.getLogger("switchyard.api.retention")

RPC_TIMEOUT = dt.timedelta(seconds=5)


async def delete_history(temporal: Client, job_id: str) -> None:
    """Delete the job's workflow execution (terminating it if it still runs); gone already is fine."""
    req = DeleteWorkflowExecutionRequest(namespace=temporal.namespace, workflow_execution=WorkflowExecution(workflow_id=job_id))
    try:
        await temporal.workflow_service.delete_workflow_execution(req, timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise


class Purger(Periodic):
    log = log

    def __init__(self, store: JobStore, bus: EventBus, temporal: Client, *, retention_s: float, every_s: float = 60.0, batch: int = 100,
                 requests: RequestStore | None = None, request_log_retention_s: float | None = None) -> None:
        super().__init__(every_s)
        self.store, self.bus, self.temporal = store, bus, temporal
        self.retention_s, self.batch = retention_s, batch
        # The request log (accounting only, no content) is kept longer than jobs' content: usage
        # reports read it (docs/observability.md).
        self.requests, self.request_log_retention_s = requests, request_log_retention_s

    async def erase_elsewhere(self, ids: list[uuid.UUID]) -> None:
        """The jobs' event streams and Temporal histories."""
        for job_id in ids:
            await self.bus.delete(str(job_id))
            await delete_history(self.temporal, str(job_id))

    async def purge(self, job_id: uuid.UUID) -> bool:
        """Erase one ended job now; False if it has not ended (nothing erased in PostgreSQL)."""
        await self.erase_elsewhere([job_id])
        return await self.store.erase(job_id)

    async def purge_expired(self) -> int:
        """Purge every job past retention, batch after batch; how many."""
        total = 0
        while True:
            ids = await self.store.purge_expired(self.retention_s, self.batch, self.erase_elsewhere)
            total += len(ids)
            if len(ids) < self.batch:
                break
        if total:
            log.info("jobs past retention purged", extra={"fields": {"jobs": total, "retention_s": self.retention_s}})
        return total

    async def purge_request_log(self) -> int:
        """Delete request-log rows older than their retention, batch after batch; how many."""
        if self.requests is None or self.request_log_retention_s is None:
            return 0
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.request_log_retention_s)
        total = 0
        while (n := await self.requests.delete_before(cutoff, self.batch * 10)) > 0:
            total += n
        total += await ShadowStore(self.requests.engine).purge(cutoff)  # shadow comparisons: numbers, kept as long
        if total:
            log.info("request log rows past retention deleted", extra={"fields": {"rows": total, "retention_s": self.request_log_retention_s}})
        return total

    async def tick(self) -> None:
        await self.purge_expired()
        await self.purge_request_log()

"""The API's gauges that describe the platform rather than one request (docs/metrics.md): the
task-queue backlog per domain and priority, and the V2 gateway's circuit breakers.

Every API process refreshes them every few seconds from sources they all share (PostgreSQL) or
hold themselves (each its own breakers); the page aggregates them with ``max``.
"""

from __future__ import annotations

import logging

import pybreaker
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from switchyard.api.v2.gateway import V2Gateway
from switchyard.common import metrics
from switchyard.common.contracts import JobStatus
from switchyard.common.db.models import Job
from switchyard.common.db.store import JobStore
from switchyard.common.periodic import Periodic
from switchyard.common.queues import DOMAINS

log = logging.getLogger("switchyard.api.gauges")

PRIORITIES = tuple(str(p) for p in range(1, 6))
BREAKER_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class PlatformGauges(Periodic):
    log = log

    def __init__(self, store: JobStore, v2: V2Gateway, every_s: float) -> None:
        super().__init__(every_s)
        self.store = store
        self.v2 = v2

    async def refresh_backlog(self) -> None:
        """Jobs accepted and not yet started: rows still ``queued`` (the status index covers it).
        Every domain and priority is set, so a drained backlog reads 0 rather than its last value."""
        stmt = select(Job.domain, Job.priority, func.count()).where(Job.status == JobStatus.queued.value).group_by(Job.domain, Job.priority)
        async with self.store.sessions() as s:
            counts = {(d, str(p)): n for d, p, n in (await s.execute(stmt)).all()}
        for domain in DOMAINS:
            for priority in PRIORITIES:
                metrics.TASK_QUEUE_BACKLOG.labels(domain=domain, priority=priority).set(counts.get((domain, priority), 0))

    def refresh_breakers(self) -> None:
        """Each V2 model's state is that of the breaker in front of its domain's worker."""
        for domain, worker in self.v2.workers.items():
            value = BREAKER_VALUES.get(worker.breaker.state, 0)
            for model in self.v2.config.for_domain(domain):
                metrics.BREAKER_STATE.labels(target=model.name).set(value)

    async def refresh(self) -> None:
        self.refresh_breakers()
        try:
            await self.refresh_backlog()
        except (SQLAlchemyError, OSError) as e:
            log.warning("backlog gauge not refreshed", extra={"fields": {"error": str(e)}})

    async def tick(self) -> None:
        await self.refresh()

"""Job rows: create, read, list and the status transitions workers persist."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from switchyard.common.contracts import JobOutcome, JobStatus
from switchyard.common.db.models import Job

_NOT_TERMINAL = [s.value for s in JobStatus if not s.terminal]


def make_engine(dsn: str) -> AsyncEngine:
    return create_async_engine(dsn, pool_size=10, max_overflow=10, pool_pre_ping=True)


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(self, values: dict[str, Any]) -> tuple[Job, bool]:
        """Insert a job; with an idempotency key its tenant already used, return that job instead (created=False)."""
        stmt = insert(Job).values(**values).on_conflict_do_nothing(index_elements=[Job.tenant, Job.idempotency_key]).returning(Job)
        async with self.sessions.begin() as s:
            row = (await s.execute(stmt)).scalar_one_or_none()
            if row is not None:
                return row, True
            existing = (await s.execute(select(Job).where(Job.tenant == values["tenant"], Job.idempotency_key == values["idempotency_key"]))).scalar_one()
            return existing, False

    async def get(self, job_id: uuid.UUID) -> Job | None:
        async with self.sessions() as s:
            return await s.get(Job, job_id)

    async def page(self, *, status: str | None, domain: str | None, limit: int, before: tuple[dt.datetime, uuid.UUID] | None,
                   tenant: str | None = None) -> list[Job]:
        """Newest first, keyset-paginated on (created_at, id); one tenant's, or every tenant's (None)."""
        q = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if tenant is not None:
            q = q.where(Job.tenant == tenant)
        if status:
            q = q.where(Job.status == status)
        if domain:
            q = q.where(Job.domain == domain)
        if before:
            q = q.where((Job.created_at, Job.id) < before)  # type: ignore[operator]
        async with self.sessions() as s:
            return list((await s.execute(q)).scalars())

    async def pending(self, model: str) -> int:
        """Jobs of a model not yet ended (backlog plus running)."""
        q = select(func.count()).select_from(Job).where(Job.model == model, Job.status.in_(_NOT_TERMINAL))
        async with self.sessions() as s:
            return int((await s.execute(q)).scalar_one())

    async def mark_dispatched(self, job_id: uuid.UUID) -> None:
        async with self.sessions.begin() as s:
            await s.execute(update(Job).where(Job.id == job_id).values(dispatched_at=func.now()))

    async def undispatched(self, older_than_s: float, limit: int) -> list[Job]:
        """Accepted jobs whose workflow start has not been confirmed for a while (oldest first)."""
        cutoff = func.now() - dt.timedelta(seconds=older_than_s)
        q = (select(Job).where(Job.dispatched_at.is_(None), Job.status == JobStatus.queued.value, Job.created_at < cutoff)
             .order_by(Job.created_at).limit(limit))
        async with self.sessions() as s:
            return list((await s.execute(q)).scalars())

    async def cancel_undispatched(self, job_id: uuid.UUID) -> bool:
        """Cancel a job whose workflow was never started; False if it was dispatched or ended."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued.value, Job.dispatched_at.is_(None))
            .values(status=JobStatus.cancelled.value, finished_at=func.now(), updated_at=func.now())
        )
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(stmt)  # type: ignore[assignment]
            return result.rowcount > 0

    async def mark_running(self, job_id: str, attempt: int) -> bool:
        """queued/running → running with the attempt number; False if the job already ended."""
        stmt = (
            update(Job)
            .where(Job.id == uuid.UUID(job_id), Job.status.in_(_NOT_TERMINAL))
            .values(status=JobStatus.running.value, attempts=attempt, started_at=func.coalesce(Job.started_at, func.now()), updated_at=func.now())
        )
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(stmt)  # type: ignore[assignment]
            return result.rowcount > 0

    async def finish(self, outcome: JobOutcome) -> bool:
        """Record the end of a job; False if it had already ended (nothing changed)."""
        stmt = (
            update(Job)
            .where(Job.id == uuid.UUID(outcome.job_id), Job.status.in_(_NOT_TERMINAL))
            .values(
                status=outcome.status.value,
                result=outcome.result,
                error=outcome.error.model_dump() if outcome.error else None,
                usage=outcome.usage.model_dump() if outcome.usage else None,
                timings=outcome.timings.model_dump() if outcome.timings else None,
                finished_at=func.now(),
                updated_at=func.now(),
            )
        )
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(stmt)  # type: ignore[assignment]
            return result.rowcount > 0

"""Job rows: create, read, list and the status transitions workers persist."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import CursorResult, func, literal_column, null, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from switchyard.common.contracts import JobOutcome, JobStatus
from switchyard.common.db.models import Job
from switchyard.common.payload_codec import KeyRing, sealed_input_context

_NOT_TERMINAL = [s.value for s in JobStatus if not s.terminal]


def engine_input(job: Job, keys: KeyRing) -> dict[str, Any]:
    """The input the engine gets: the sealed one if there is one (``input`` is the readable,
    PII-redacted copy), else ``input`` (it is the engine's: redacted, or without text)."""
    if job.input_sealed is None:
        return dict(job.input)
    value: dict[str, Any] = keys.unseal(job.input_sealed, sealed_input_context(job.id))
    return value


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

    async def statuses(self, job_ids: list[uuid.UUID]) -> dict[str, str]:
        """Job id → status, for those of ``job_ids`` that exist (the backlog's reconcile)."""
        if not job_ids:
            return {}
        async with self.sessions() as s:
            return {str(i): st for i, st in (await s.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))).all()}

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
            .values(status=JobStatus.cancelled.value, finished_at=func.now(), updated_at=func.now(), input_sealed=None)
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

    async def finish(self, outcome: JobOutcome, result_sealed: bytes | None = None) -> bool:
        """Record the end of a job (``result_sealed``: the engine's answer, encrypted, when
        ``outcome.result`` is its redacted copy); False if it had already ended (nothing changed)."""
        stmt = (
            update(Job)
            .where(Job.id == uuid.UUID(outcome.job_id), Job.status.in_(_NOT_TERMINAL))
            .values(
                status=outcome.status.value,
                result=outcome.result,
                result_sealed=result_sealed,
                error=outcome.error.model_dump() if outcome.error else None,
                usage=outcome.usage.model_dump() if outcome.usage else None,
                timings=outcome.timings.model_dump() if outcome.timings else None,
                input_sealed=None,  # the engine's input is not needed any more
                finished_at=func.now(),
                updated_at=func.now(),
            )
        )
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(stmt)  # type: ignore[assignment]
            return result.rowcount > 0

    async def erase(self, job_id: uuid.UUID) -> bool:
        """Erase an ended job's content now (DELETE ?purge=true); False if it has not ended."""
        stmt = update(Job).where(Job.id == job_id, Job.status.not_in(_NOT_TERMINAL)).values(**_ERASED)
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(stmt)  # type: ignore[assignment]
            return result.rowcount > 0

    async def purge_expired(self, ended_before_s: float, limit: int, erase_elsewhere: Callable[[list[uuid.UUID]], Awaitable[None]]) -> list[uuid.UUID]:
        """Erase up to ``limit`` jobs that ended more than ``ended_before_s`` ago (retention); their ids.

        The rows stay locked (SKIP LOCKED: several API processes take disjoint batches) while
        ``erase_elsewhere`` removes the jobs' data outside PostgreSQL; they are marked purged only
        after it succeeded, so a crash or an error in between leaves them to the next round.
        """
        cutoff = func.now() - dt.timedelta(seconds=ended_before_s)
        q = (select(Job.id).where(Job.purged_at.is_(None), Job.finished_at < cutoff).order_by(Job.finished_at).limit(limit)
             .with_for_update(skip_locked=True))
        async with self.sessions.begin() as s:
            ids = list((await s.execute(q)).scalars())
            if ids:
                await erase_elsewhere(ids)
                await s.execute(update(Job).where(Job.id.in_(ids)).values(**_ERASED))
        return ids


# What a purged job keeps: id, tenant, domain, model, status, priority, attempts, usage, timings,
# timestamps, metadata keys and the error's type. Its content goes: input, sealed input, result,
# metadata values, error message, and the idempotency key and request hash (a hash of the input
# would let a guess of it be confirmed).
_ERASED: dict[str, Any] = {
    "input": {},
    "input_sealed": None,
    "result": null(),
    "result_sealed": None,
    "idempotency_key": None,
    "request_hash": None,
    "metadata_": literal_column("CASE WHEN jsonb_typeof(jobs.metadata) = 'object' THEN "
                                "(SELECT coalesce(jsonb_object_agg(k, ''), '{}'::jsonb) FROM jsonb_object_keys(jobs.metadata) AS k) "
                                "ELSE '{}'::jsonb END"),
    "error": literal_column("CASE WHEN jsonb_typeof(jobs.error) = 'object' THEN jsonb_set(jobs.error, '{message}', '\"\"') ELSE NULL END"),
    "purged_at": func.now(),
    "updated_at": func.now(),
}

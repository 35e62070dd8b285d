"""Job rows: create, read, list and the status transitions workers persist."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from sqlalchemy import CursorResult, Table, delete, func, literal_column, null, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from switchyard.common.contracts import JobOutcome, JobStatus
from switchyard.common.db.models import Job, RequestRow
from switchyard.common.payload_codec import KeyRing, sealed_input_context
from switchyard.common.request_log import endpoint_of, items_of

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
        """Accepted jobs whose workflow start has not been confirmed for a while (oldest first): queued
        ones, and running ones (a completion the API started itself, still going or left by an API
        that died: switchyard.api.openai.fast_start). An ended job needs no workflow."""
        cutoff = func.now() - dt.timedelta(seconds=older_than_s)
        q = (select(Job).where(Job.dispatched_at.is_(None), Job.status.in_(_NOT_TERMINAL), Job.created_at < cutoff)
             .order_by(Job.created_at).limit(limit))
        async with self.sessions() as s:
            return list((await s.execute(q)).scalars())

    async def cancel_undispatched(self, job_id: uuid.UUID, *, running: bool = False) -> bool:
        """Cancel a job whose workflow was never started; False if it was dispatched or ended.
        ``running``: also one already running (a completion the API runs itself, which stops on its own)."""
        statuses = _NOT_TERMINAL if running else [JobStatus.queued.value]
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_(statuses), Job.dispatched_at.is_(None))
            .values(status=JobStatus.cancelled.value, dispatched_at=func.now(), finished_at=func.now(), updated_at=func.now(), input_sealed=None)
            .returning(*_REQUEST_OF_JOB)
        )
        async with self.sessions.begin() as s:
            job = (await s.execute(stmt)).one_or_none()
            if job is not None and (complete := _complete_request(job, JobOutcome(job_id=str(job_id), status=JobStatus.cancelled))) is not None:
                await s.execute(complete)
            return job is not None

    async def mark_running(self, job_id: str) -> int | None:
        """queued/running → running, one more attempt; the attempt's number (attempts started so
        far, this one included), or None if the job already ended."""
        stmt = (
            update(Job)
            .where(Job.id == uuid.UUID(job_id), Job.status.in_(_NOT_TERMINAL))
            .values(status=JobStatus.running.value, attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, func.now()), updated_at=func.now())
            .returning(Job.attempts)
        )
        async with self.sessions.begin() as s:
            row = (await s.execute(stmt)).first()
            return None if row is None else int(row[0])

    async def finish(self, outcome: JobOutcome, result_sealed: bytes | None = None) -> Job | None:
        """Record the end of a job (``result_sealed``: the engine's answer, encrypted, when
        ``outcome.result`` is its redacted copy); the row as it ended (no second read), or None if
        it had already ended (nothing changed) or is gone."""
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
                # An ended job needs no workflow any more: out of the outbox's index (a completion the
                # API ran itself ends without one; then dispatched_at == finished_at: ended_undispatched).
                dispatched_at=func.coalesce(Job.dispatched_at, func.now()),
                finished_at=func.now(),
                updated_at=func.now(),
            )
            .returning(Job)
        )
        async with self.sessions.begin() as s:
            job = (await s.execute(stmt)).scalar_one_or_none()
            # The job's request row, in the same transaction: GET /v1/jobs and /v1/usage agree.
            if job is not None and (complete := _complete_request(job, outcome)) is not None:
                await s.execute(complete)
            return job

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


def ended_undispatched(job: Job) -> bool:
    """Whether the job ended without the outbox ever starting its workflow (its end marked it done: ``finish``)."""
    return job.finished_at is not None and job.dispatched_at == job.finished_at


# What the end of a job needs to complete its request's row.
_REQUEST_OF_JOB = (Job.id, Job.tenant, Job.model, Job.priority, Job.attempts, Job.request_id, Job.request_family, Job.created_at, Job.model_spec)

# Columns of a request row the API's writer owns; the rest, for a job, the job's end owns.
API_COLUMNS = ("request_id", "route", "method", "status", "key_id", "params", "created_at")
JOB_COLUMNS = ("prompt_tokens", "completion_tokens", "items", "queue_ms", "ttft_ms", "engine_ms", "total_ms", "overhead_ms", "attempts",
               "outcome", "endpoint", "finished_at")


def _complete_request(job: Any, outcome: JobOutcome) -> Any | None:
    """The statement that completes the request row of a job submitted through ``/v1/jobs`` with
    how it ended: an upsert on ``job_id``, since the API's writer may not have inserted it yet
    (its insert then keeps these columns; see ``RequestStore.insert``). A job of an OpenAI
    completion is accounted by the API (tokens sent to the client): None, nothing to do."""
    if job.request_family != "jobs":
        return None
    t = outcome.timings
    values: dict[str, Any] = {
        "job_id": job.id, "request_id": job.request_id or "", "family": "jobs", "route": "/v1/jobs", "method": "POST", "status": "202",
        "tenant": job.tenant, "model": job.model, "priority": job.priority, "created_at": job.created_at, "params": {},
        "prompt_tokens": outcome.usage.prompt_tokens if outcome.usage else None,
        "completion_tokens": outcome.usage.completion_tokens if outcome.usage else None,
        "items": items_of(outcome.result), "queue_ms": t.queue_ms if t else None, "ttft_ms": t.ttft_ms if t else None,
        "engine_ms": t.engine_ms if t else None, "total_ms": t.total_ms if t else None,
        "overhead_ms": max(0.0, t.total_ms - t.engine_ms) if t and t.total_ms is not None and t.engine_ms is not None else None,
        "attempts": job.attempts, "outcome": outcome.status.value, "endpoint": endpoint_of(outcome.result, job.model_spec), "finished_at": func.now(),
    }
    stmt = insert(RequestRow).values(**values)
    return stmt.on_conflict_do_update(index_elements=[RequestRow.job_id], index_where=RequestRow.job_id.isnot(None),
                                      set_={c: stmt.excluded[c] for c in JOB_COLUMNS}, where=RequestRow.family == "jobs")


class RequestStore:
    """The ``requests`` table: the API's batched inserts and the usage it reports."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        # One Core statement, executed with a list of rows (executemany): compiled once and cached.
        # A statement built with .values(rows) is compiled again for every batch, which was ~28 % of
        # the API's CPU at 80 req/s (py-spy, docs/recsys.md).
        table = cast(Table, RequestRow.__table__)
        stmt = insert(table)
        self._insert = stmt.on_conflict_do_update(index_elements=[table.c.job_id], index_where=table.c.job_id.isnot(None),
                                                  set_={c: stmt.excluded[c] for c in API_COLUMNS})

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        """One round of statements for a batch (every row has the same keys). A job's row the job's
        end already wrote (a fast job) keeps what the end recorded; the API's columns are filled in."""
        if not rows:
            return
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, rows)

    async def usage(self, start: dt.datetime, end: dt.datetime, tenant: str | None, model: str | None) -> list[Any]:
        """Per tenant and model over [start, end): requests, prompt/completion tokens, items (rows
        with a model only: lookups and key admin have none)."""
        q = (select(RequestRow.tenant, RequestRow.model, func.count().label("requests"),
                    func.coalesce(func.sum(RequestRow.prompt_tokens), 0).label("prompt_tokens"),
                    func.coalesce(func.sum(RequestRow.completion_tokens), 0).label("completion_tokens"),
                    func.coalesce(func.sum(RequestRow.items), 0).label("items"))
             .where(RequestRow.created_at >= start, RequestRow.created_at < end, RequestRow.model != "", RequestRow.tenant.isnot(None))
             .group_by(RequestRow.tenant, RequestRow.model).order_by(RequestRow.tenant, RequestRow.model))
        if tenant is not None:
            q = q.where(RequestRow.tenant == tenant)
        if model is not None:
            q = q.where(RequestRow.model == model)
        async with self.sessions() as s:
            return list((await s.execute(q)).all())

    async def delete_before(self, cutoff: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest rows created before ``cutoff``; how many."""
        oldest = select(RequestRow.id).where(RequestRow.created_at < cutoff).order_by(RequestRow.created_at).limit(limit)
        async with self.sessions.begin() as s:
            result: CursorResult[Any] = await s.execute(delete(RequestRow).where(RequestRow.id.in_(oldest)))  # type: ignore[assignment]
            return result.rowcount

    async def of_job(self, job_id: uuid.UUID) -> RequestRow | None:
        async with self.sessions() as s:
            return (await s.execute(select(RequestRow).where(RequestRow.job_id == job_id))).scalar_one_or_none()


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

"""The ``jobs`` table: one row per accepted job, written before the API answers 202; ``api_keys``:
the API's keys, stored as HMACs (switchyard.common.keys)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CHAR, BigInteger, DateTime, Float, Index, Integer, LargeBinary, SmallInteger, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    domain: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(SmallInteger)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The model's catalog entry when the job was accepted (switchyard.common.catalog.Catalog.snapshot).
    model_spec: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # The tenant of the key that created the job: only that tenant (and admin keys) sees it.
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    # Unique per tenant (uq_jobs_tenant_idempotency_key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set once the job's workflow exists, or when it ended without one (transactional outbox: see
    # docs/architecture.md); the outbox's sweeper looks only at rows without it.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The engine's input, encrypted (switchyard.common.payload_codec: KeyRing.seal), when ``input``,
    # the readable copy (PII redacted), is not it (`pass` policy). Kept while the job may run only.
    input_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The engine's answer, encrypted, when ``result`` is its PII-redacted copy (LLM jobs): what the
    # job's tenant reads back (switchyard.api.jobs.views). Erased with the rest at purge.
    result_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # When retention (or DELETE ?purge=true) erased the job's content (docs/security.md).
    purged_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The request that created the job (X-Request-Id, migration 0007): carried to the worker and
    # the engine. ``request_family``: the route family that accepted it ("jobs" or "openai"); the
    # end of a "jobs" job completes that request's row in ``requests``.
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_family: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_domain_created", "domain", "created_at"),
        Index("ix_jobs_undispatched", "created_at", postgresql_where=dispatched_at.is_(None)),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # The retention purger's work list: ended jobs not purged yet, oldest end first.
        Index("ix_jobs_purge_due", "finished_at", postgresql_where=purged_at.is_(None)),
    )


class RequestRow(Base):
    """One row per API request (REQ-OPS-02), written off the request path by the API's background
    writer (switchyard.api.request_log); a job's row is completed when the job ends
    (``JobStore.finish``). Never any text of the request: parameters are numbers and switches."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    family: Mapped[str] = mapped_column(String(16))
    route: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))
    # The HTTP status code, or the gRPC code name (v2_grpc).
    status: Mapped[str] = mapped_column(String(32))
    tenant: Mapped[str | None] = mapped_column(String(64))
    key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    model: Mapped[str] = mapped_column(String(128), default="")
    endpoint: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    items: Mapped[int | None] = mapped_column(Integer)
    queue_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    engine_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    overhead_ms: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int | None] = mapped_column(SmallInteger)
    outcome: Mapped[str] = mapped_column(String(16), default="")
    # The job this request created (one row per job: an idempotent replay's row has none).
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_requests_created", "created_at"),
        Index("ix_requests_tenant_created", "tenant", "created_at"),
        Index("ux_requests_job", "job_id", unique=True, postgresql_where=job_id.isnot(None)),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    # The secret's first characters, to recognise a key in listings (never enough to use it).
    prefix: Mapped[str] = mapped_column(String(16))
    # HMAC-SHA256(pepper, secret), hex: the secret itself is never stored.
    key_hash: Mapped[str] = mapped_column(CHAR(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONB)
    tier: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # The key's own limits (migration 0005); NULL: its tier's (ApiSettings.tier_quotas).
    rps: Mapped[float | None] = mapped_column(Float)
    max_streams: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_api_keys_tenant_created", "tenant", "created_at"),)


class ShadowResult(Base):
    """One shadow case the shadow worker finished (docs/shadow.md): numbers only, never the request,
    the answers or an error's text."""

    __tablename__ = "shadow_results"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    model: Mapped[str] = mapped_column(String(128))
    candidate: Mapped[str] = mapped_column(String(128))
    domain: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(24))
    error: Mapped[str | None] = mapped_column(String(64))
    primary_ms: Mapped[float] = mapped_column(Float)
    candidate_ms: Mapped[float | None] = mapped_column(Float)
    top1_agreement: Mapped[float | None] = mapped_column(Float)
    topk_overlap: Mapped[float | None] = mapped_column(Float)
    text_similarity: Mapped[float | None] = mapped_column(Float)
    primary_tokens: Mapped[int | None] = mapped_column(Integer)
    candidate_tokens: Mapped[int | None] = mapped_column(Integer)
    primary_ttft_ms: Mapped[float | None] = mapped_column(Float)
    candidate_ttft_ms: Mapped[float | None] = mapped_column(Float)


class CatalogChangeRow(Base):
    """A promotion or rollback (switchyard.common.shadow.overlay): applied, in id order, on top of
    the checked-in catalog by every process. Kept for good: it is the catalog's history."""

    __tablename__ = "catalog_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    model: Mapped[str] = mapped_column(String(128))
    # promote | rollback | resume
    action: Mapped[str] = mapped_column(String(16))
    candidate: Mapped[str | None] = mapped_column(String(128))
    # The admin key's "tenant/name", or "switchyard (automatic)".
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(1000))

    __table_args__ = (Index("ix_catalog_changes_model", "model", "id"),)

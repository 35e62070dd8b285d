"""``/v1/admin``: API keys (admin scope). A new key's secret is in the creation answer only; listings
show its prefix, never the secret or its hash."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from switchyard.api.auth import require
from switchyard.api.deps import Res
from switchyard.api.errors import ApiError
from switchyard.common.contracts import StorableStr
from switchyard.common.db.models import ApiKey
from switchyard.common.keys import DEFAULT_SCOPES, Scope, Tier

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require("admin"))])

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
Tenant = Annotated[str, Field(min_length=1, max_length=64, pattern=TENANT_PATTERN)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Tenant
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1)
    tier: Tier = "normal"
    name: Annotated[StorableStr, Field(max_length=128)] = ""
    # The key's own limits; null: its tier's (docs/security.md "Quotas and rate limits").
    rps: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    max_streams: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    tpm: Annotated[int, Field(ge=0, le=10**12)] | None = None


class KeyView(BaseModel):
    id: str
    tenant: str
    scopes: list[str]
    tier: str
    name: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    # The key's own limits (null: its tier's).
    rps: float | None = None
    max_streams: int | None = None
    tpm: int | None = None

    @classmethod
    def of(cls, row: ApiKey) -> KeyView:
        return cls(id=str(row.id), tenant=row.tenant, scopes=list(row.scopes), tier=row.tier, name=row.name, prefix=row.prefix,
                   created_at=row.created_at, revoked_at=row.revoked_at, rps=row.rps, max_streams=row.max_streams, tpm=row.tpm)


class KeyCreated(KeyView):
    key: str  # the secret: shown in this answer only


class KeyList(BaseModel):
    data: list[KeyView]


@router.post("/keys", status_code=201)
async def create_key(res: Res, body: KeyCreate) -> KeyCreated:
    secret, row = await res.keys.create(body.tenant, list(dict.fromkeys(body.scopes)), body.tier, body.name,
                                        rps=body.rps, max_streams=body.max_streams, tpm=body.tpm)
    return KeyCreated(**KeyView.of(row).model_dump(), key=secret)


@router.get("/keys")
async def list_keys(res: Res, tenant: Annotated[str | None, Query(min_length=1, max_length=64, pattern=TENANT_PATTERN)] = None) -> KeyList:
    return KeyList(data=[KeyView.of(r) for r in await res.keys.list(tenant)])


@router.delete("/keys/{key_id}")
async def revoke_key(res: Res, key_id: str) -> KeyView:
    """Revoke a key; this process refuses it at once, the other API processes within 5 s."""
    try:
        row = await res.keys.revoke(uuid.UUID(key_id))
    except ValueError:
        row = None
    if row is None:
        raise ApiError(404, "key_not_found", f"no key {key_id!r}", param="key_id")
    return KeyView.of(row)

"""Promotion and rollback (docs/shadow.md, "Canary and promotion"), admin scope:

- ``POST /v1/shadow/{model}/promote``: the model's shadow candidate becomes its definition;
- ``POST /v1/shadow/{model}/rollback``: back to the checked-in definition, canary off;
- ``POST /v1/shadow/{model}/resume``: the checked-in definition as it is (re-arms its canary);
- ``GET /v1/shadow/{model}/changes``: who did what, when and why (automatic rollbacks included).

A change is a row of ``catalog_changes`` that every process applies on top of the catalog files
(switchyard.common.shadow.overlay); this process applies it before answering, the others within
their next poll (switchyard.common.db.catalog_changes, every 2 s).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from switchyard.api.auth import Caller, require
from switchyard.api.deps import Res, Resources
from switchyard.api.errors import ApiError
from switchyard.common.catalog import CatalogError, build_catalog
from switchyard.common.contracts import StorableStr
from switchyard.common.db.catalog_changes import ChangeFollower
from switchyard.common.db.models import ApiKey
from switchyard.common.keys import Principal
from switchyard.common.metrics import CATALOG_CHANGES
from switchyard.common.model_registry import ModelEntry
from switchyard.common.shadow.canary import active_canary
from switchyard.common.shadow.overlay import Action, CatalogChange, promoted
from switchyard.common.v2.config import V2Model

router = APIRouter(prefix="/v1/shadow", tags=["shadow"], dependencies=[Depends(require("admin"))])


class ChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Why: kept with the change, shown by GET .../changes.
    reason: Annotated[StorableStr, Field(min_length=1, max_length=1000)]


class ChangeView(BaseModel):
    object: Literal["catalog.change"] = "catalog.change"
    id: int
    model: str
    action: Action
    candidate: str | None
    actor: str
    reason: str
    created_at: dt.datetime

    @classmethod
    def of(cls, c: CatalogChange) -> ChangeView:
        return cls.model_validate(c.model_dump())


class ChangeList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    # Whether a promotion is in force now, and the model's canary weight now (null: no canary).
    promoted: bool
    canary_weight: float | None
    data: list[ChangeView]


def _follower(res: Resources) -> ChangeFollower:
    if res.changes is None:  # an app built without a database (packaging checks)
        raise ApiError(503, "unavailable", "catalog changes are not available in this process", headers={"Retry-After": "30"})
    return res.changes


def _model(res: Resources, name: str) -> ModelEntry | V2Model:
    m = res.catalog.current.model(name)
    if m is None:
        raise ApiError(404, "model_not_found", f"The model {name!r} does not exist", param="model")
    return m


async def _actor(res: Resources, caller: Principal) -> str:
    """Who: the key's tenant and name (its id when unnamed)."""
    async with res.store.sessions() as s:
        row = await s.get(ApiKey, uuid.UUID(caller.key_id))
    return f"{caller.tenant}/{row.name if row is not None and row.name else caller.key_id}"


async def _change(res: Resources, caller: Principal, m: ModelEntry | V2Model, action: Action, candidate: str | None, reason: str) -> ChangeView:
    """Record the change once the catalog it makes validated; apply it here before answering."""
    follower = _follower(res)
    holder = follower.catalog
    trial = CatalogChange(id=(holder.changes[-1].id + 1 if holder.changes else 1), model=m.name, action=action, candidate=candidate,
                          actor="-", reason=reason, created_at=dt.datetime.now(dt.UTC))
    try:
        build_catalog(holder.files, holder.env, [*holder.changes, trial])
    except CatalogError as e:
        raise ApiError(409, "change_refused", f"the catalog would not validate after this {action}: {e}", param="model") from None
    change = await follower.store.record(model=m.name, action=action, candidate=candidate, actor=await _actor(res, caller), reason=reason)
    CATALOG_CHANGES.labels(model=m.name, action=action, by="admin").inc()
    await follower.sync()
    return ChangeView.of(change)


@router.post("/{model:path}/promote", response_model=ChangeView)
async def promote(res: Res, caller: Caller, model: str, body: ChangeRequest) -> ChangeView:
    """The model's shadow candidate becomes the model (its definition as checked in, under this name)."""
    await _follower(res).sync()
    m = _model(res, model)
    if m.shadow is None:
        raise ApiError(409, "nothing_to_promote", f"{m.name!r} has no shadow candidate to promote", param="model")
    return await _change(res, caller, m, "promote", m.shadow.candidate, body.reason)


@router.post("/{model:path}/rollback", response_model=ChangeView)
async def rollback(res: Res, caller: Caller, model: str, body: ChangeRequest) -> ChangeView:
    """Undo a promotion and switch the model's canary off: back to its checked-in definition."""
    await _follower(res).sync()
    m = _model(res, model)
    promotion = promoted(m.name, res.catalog.changes)
    if promotion is None and active_canary(m.shadow) is None:
        raise ApiError(409, "nothing_to_roll_back", f"{m.name!r} has no promotion in force and no canary sending traffic", param="model")
    candidate = promotion.candidate if promotion is not None else (m.shadow.candidate if m.shadow else None)
    return await _change(res, caller, m, "rollback", candidate, body.reason)


@router.post("/{model:path}/resume", response_model=ChangeView)
async def resume(res: Res, caller: Caller, model: str, body: ChangeRequest) -> ChangeView:
    """After a rollback: the checked-in definition as it is again (its canary, if any, sends traffic again)."""
    await _follower(res).sync()
    m = _model(res, model)
    last = next((c for c in reversed(res.catalog.changes) if c.model == m.name), None)
    if last is None or last.action != "rollback":
        raise ApiError(409, "nothing_to_resume", f"{m.name!r} is not rolled back", param="model")
    return await _change(res, caller, m, "resume", last.candidate, body.reason)


@router.get("/{model:path}/changes", response_model=ChangeList)
async def changes(res: Res, model: str) -> ChangeList:
    """The model's promotions and rollbacks, oldest first."""
    follower = _follower(res)
    await follower.sync()
    m = _model(res, model)
    canary = m.shadow.canary if m.shadow is not None else None
    return ChangeList(model=m.name, promoted=promoted(m.name, res.catalog.changes) is not None, canary_weight=canary.weight if canary else None,
                      data=[ChangeView.of(c) for c in await follower.store.all(m.name)])

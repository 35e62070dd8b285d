"""Promotions and rollbacks: changes stored in PostgreSQL (``catalog_changes``) that every process
applies, in order, on top of the checked-in catalog files (switchyard.common.catalog), at start and
on each reload (docs/shadow.md, "Canary and promotion").

They act on the models' declarations as the files give them (after ``${VAR}`` substitution), before
validation:

- ``promote``: the model's definition becomes its candidate's as checked in (LLM: its endpoints and
  context; V2: its steps, backends and I/O) under the model's own name; the shadow (and its canary)
  goes, the model's PII policy stays (a promotion must not loosen it).
- ``rollback``: the checked-in definition again (undoing a promotion), with its canary's weight 0
  (a canary rolled back stays off: the automatic rollback must not be undone by the next reload).
- ``resume``: the checked-in definition as it is, canary included (re-arms a rolled-back canary).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger("switchyard.catalog")

Action = Literal["promote", "rollback", "resume"]
ACTIONS: tuple[Action, ...] = ("promote", "rollback", "resume")
# Who the automatic rollback is, in a change row's ``actor``.
AUTOMATIC = "switchyard (automatic)"


class CatalogChange(BaseModel):
    """One row of ``catalog_changes``: who did what to which model, when and why."""

    id: int
    model: str = Field(max_length=128)
    action: Action
    # promote: the candidate promoted; rollback/resume: the candidate the model had then (may be null).
    candidate: str | None = None
    actor: str = Field(max_length=128)
    reason: str = Field(max_length=1000)
    created_at: dt.datetime


class ChangeSkipped(ValueError):
    """A change that cannot apply to these files (its model or candidate is no longer declared)."""


def apply_one(bodies: dict[str, dict[str, Any]], checked_in: Mapping[str, dict[str, Any]], change: CatalogChange) -> None:
    """Apply ``change`` to ``bodies`` (name -> declaration, changed in place) given the files' own
    declarations ``checked_in``; ChangeSkipped when it does not apply."""
    own = checked_in.get(change.model)
    if own is None:
        raise ChangeSkipped(f"change {change.id}: no model {change.model!r} in the catalog files")
    if change.action == "promote":
        cand = checked_in.get(change.candidate or "")
        if cand is None:
            raise ChangeSkipped(f"change {change.id}: no candidate {change.candidate!r} in the catalog files")
        if (cand.get("domain"), cand.get("kind")) != (own.get("domain"), own.get("kind")):
            raise ChangeSkipped(f"change {change.id}: {change.candidate!r} is not a model of the same domain and kind as {change.model!r}")
        if str(cand.get("enabled", True)).lower() in ("false", "0", "no"):
            raise ChangeSkipped(f"change {change.id}: the candidate {change.candidate!r} is switched off (enabled: false)")
        body = {k: copy.deepcopy(v) for k, v in cand.items() if k not in ("shadow", "pii", "enabled")}
        body["name"] = change.model
        if "pii" in own:
            body["pii"] = own["pii"]
        bodies[change.model] = body
        return
    body = copy.deepcopy(own)
    if change.action == "rollback":
        canary = (body.get("shadow") or {}).get("canary")
        if isinstance(canary, dict):
            canary["weight"] = 0.0
    bodies[change.model] = body


def apply_changes(checked_in: Mapping[str, dict[str, Any]], changes: Sequence[CatalogChange]) -> dict[str, dict[str, Any]]:
    """The declarations after ``changes`` (in order); a change that no longer applies is skipped
    and logged (the files changed under it), not a reason to refuse the catalog."""
    bodies = dict(checked_in)
    for change in changes:
        try:
            apply_one(bodies, checked_in, change)
        except ChangeSkipped as e:
            log.warning("catalog change skipped", extra={"fields": {"error": str(e)}})
    return bodies


def promoted(model: str, changes: Sequence[CatalogChange]) -> CatalogChange | None:
    """The promotion in force for ``model`` (its last change is a promote), else None."""
    last = next((c for c in reversed(changes) if c.model == model), None)
    return last if last is not None and last.action == "promote" else None

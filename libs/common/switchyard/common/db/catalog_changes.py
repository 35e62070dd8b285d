"""The ``catalog_changes`` table (promotions and rollbacks, switchyard.common.shadow.overlay) and
how a process follows it: every ``every_s`` it reads the table's last id (one indexed query) and,
when it moved, reloads its catalog with all the changes. PostgreSQL is the one source: a process
that was down, or missed a poll, catches up on its next one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.models import CatalogChangeRow
from switchyard.common.shadow.overlay import Action, CatalogChange

log = logging.getLogger("switchyard.catalog")

# How often a process looks for new changes (a promotion or rollback reaches every process within this).
FOLLOW_EVERY_S = 2.0


class ChangeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(self, *, model: str, action: Action, candidate: str | None, actor: str, reason: str) -> CatalogChange:
        async with self.engine.begin() as conn:
            row = (await conn.execute(insert(CatalogChangeRow).values(model=model, action=action, candidate=candidate, actor=actor[:128],
                                                                      reason=reason[:1000]).returning(*CatalogChangeRow.__table__.c))).one()
        return CatalogChange.model_validate(dict(row._mapping))

    async def all(self, model: str | None = None) -> list[CatalogChange]:
        """Every change (of ``model``), oldest first: the order they apply in."""
        q = select(*CatalogChangeRow.__table__.c).order_by(CatalogChangeRow.id)
        if model is not None:
            q = q.where(CatalogChangeRow.model == model)
        async with self.engine.connect() as conn:
            return [CatalogChange.model_validate(dict(r._mapping)) for r in await conn.execute(q)]

    async def last_id(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.coalesce(func.max(CatalogChangeRow.id), 0)))).scalar_one())


class ChangeFollower:
    """Keeps ``catalog`` in step with the table: ``sync()`` once before serving, then ``run()``."""

    def __init__(self, store: ChangeStore, catalog: CatalogHolder, every_s: float = FOLLOW_EVERY_S) -> None:
        self.store = store
        self.catalog = catalog
        self.every_s = every_s
        # The last id seen: a set of changes the catalog refused is not retried every poll.
        self.seen = 0

    def applied_id(self) -> int:
        return self.catalog.changes[-1].id if self.catalog.changes else 0

    async def sync(self) -> bool:
        """Reload if the table moved since the changes applied now; True if the catalog changed."""
        last = await self.store.last_id()
        if last in (self.applied_id(), self.seen):
            return False
        self.seen = last
        return self.apply(await self.store.all())

    def apply(self, changes: Sequence[CatalogChange]) -> bool:
        if [c.id for c in changes] == [c.id for c in self.catalog.changes]:
            return False
        return self.catalog.reload(changes)

    async def sync_or_log(self) -> None:
        try:
            await self.sync()
        except (SQLAlchemyError, OSError) as e:  # the database away: keep serving, try again next time
            log.warning("could not read the catalog changes", extra={"fields": {"error": repr(e)}})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.sync_or_log()

"""The recsys worker's feature source on Feast (infra/feast: SQL registry in PostgreSQL, Redis online
store): the only module that imports feast, which lives in the recsys venv, not in the Pants resolve.

Per request only the user's three views are read (``get_online_features_async``, one entity); the
item features change only when Feast materializes, so they are read in bulk at start and refreshed
in the background (docs/recsys.md measured a 100-item read at 4-11 ms p50, the cache at 0.01 ms).
Every Feast call goes through a ``StoreGuard`` (timeout, circuit breaker, 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # pants: no-infer-dep
from feast import FeatureStore  # pants: no-infer-dep
from feast.data_source import PushMode  # pants: no-infer-dep

from switchyard.worker_recsys.source import ITEM_FEATURES, USER_FEATURES, ItemTable, StoreGuard, UserRow

log = logging.getLogger("switchyard.worker_recsys")

USER_REFS: Final = [*(f"user_features:{f}" for f in USER_FEATURES), "user_embedding:embedding", "user_history:recent_items"]
ITEM_REFS: Final = [f"item_features:{f}" for f in ITEM_FEATURES]
# Push sources of the user's views (infra/feast/definitions.py).
PUSH_FEATURES, PUSH_EMBEDDING, PUSH_HISTORY = "user_events_push", "user_embedding_push", "user_history_push"
# Items per bulk read: each read converts its rows in Python on the event loop (~5 ms per 100
# items), so a refresh is cut into small reads that let requests through in between.
ITEM_CHUNK: Final = 100


class FeastFeatures:
    def __init__(self, store: Any, n_items: int, *, timeout_s: float, push_timeout_s: float, refresh_s: float, guard: StoreGuard) -> None:
        self.store = store
        self.n_items = n_items
        self.timeout_s = timeout_s
        self.push_timeout_s = push_timeout_s
        self.refresh_s = refresh_s
        self.guard = guard
        self._items: ItemTable | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, repo: Path, env: dict[str, str], n_items: int, *, timeout_s: float, push_timeout_s: float, refresh_s: float,
                   guard: StoreGuard) -> FeastFeatures:
        """Connect (registry, Redis) and load the item cache. ``env``: the ``${VAR}``s that
        feature_store.yaml names; Feast reads them from the environment and has no defaults."""
        os.environ.update(env)
        store = FeatureStore(repo_path=str(repo))
        await store.initialize()
        missing = {r.split(":")[0] for r in USER_REFS + ITEM_REFS} - {fv.name for fv in store.list_feature_views()}
        if missing:
            raise RuntimeError(f"Feast registry has no feature view(s) {sorted(missing)}: run build-support/setup-recsys.sh")
        feast = cls(store, n_items, timeout_s=timeout_s, push_timeout_s=push_timeout_s, refresh_s=refresh_s, guard=guard)
        feast._items = await feast._read_items()
        feast._tasks = [asyncio.create_task(feast._keep(feast._refresh_items, refresh_s)),
                        # Feast refreshes a stale registry cache synchronously inside a read (a PostgreSQL
                        # round trip on the event loop); refreshed in a thread before it goes stale, it never is.
                        asyncio.create_task(feast._keep(lambda: asyncio.to_thread(store.refresh_registry), feast._registry_ttl_s() / 2))]
        return feast

    def _registry_ttl_s(self) -> float:
        ttl = getattr(self.store.config.registry, "cache_ttl_seconds", 60) or 60
        return max(1.0, float(ttl))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
            with suppress(asyncio.CancelledError):
                await t
        await self.store.close()

    # ------------------------------------------------------------ FeatureSource

    @property
    def items(self) -> ItemTable:
        assert self._items is not None, "open() loads the items"
        return self._items

    async def ready(self) -> bool:
        return self._items is not None and not self.guard.open

    async def user(self, user_id: int) -> UserRow | None:
        resp = await self.guard.call("read", lambda: self.store.get_online_features_async(features=USER_REFS, entity_rows=[{"user_id": user_id}]),
                                self.timeout_s)
        d = {k: v[0] for k, v in resp.to_dict().items()}
        if d["events_30d"] is None or d["embedding"] is None:
            return None
        return UserRow(
            events_1d=int(d["events_1d"] or 0),
            events_7d=int(d["events_7d"] or 0),
            events_30d=int(d["events_30d"]),
            category_affinity=np.asarray(d["category_affinity"], dtype=np.float32),
            top_category=int(d["top_category"] if d["top_category"] is not None else -1),
            embedding=np.asarray(d["embedding"], dtype=np.float32),
            recent_items=np.asarray(d["recent_items"] or [], dtype=np.int64),
        )

    async def push(self, user_id: int, row: UserRow) -> None:
        # The online store keeps a row only if it is newer than the one it has: wall-clock time.
        ts = pd.Timestamp(datetime.now(UTC))
        frames = {
            PUSH_FEATURES: pd.DataFrame({"user_id": [user_id], "event_timestamp": [ts], "events_1d": [row.events_1d], "events_7d": [row.events_7d],
                                         "events_30d": [row.events_30d], "category_affinity": [row.category_affinity], "top_category": [row.top_category]}),
            PUSH_EMBEDDING: pd.DataFrame({"user_id": [user_id], "event_timestamp": [ts], "embedding": [row.embedding]}),
            PUSH_HISTORY: pd.DataFrame({"user_id": [user_id], "event_timestamp": [ts], "recent_items": [row.recent_items]}),
        }

        async def push_all() -> None:
            await asyncio.gather(*(self.store.push_async(name, df, to=PushMode.ONLINE) for name, df in frames.items()))

        await self.guard.call("push", push_all, self.push_timeout_s)

    async def _read_items(self) -> ItemTable:
        cols: dict[str, list[Any]] = {f: [] for f in ITEM_FEATURES}
        for lo in range(0, self.n_items, ITEM_CHUNK):
            rows = [{"item_id": i} for i in range(lo, min(self.n_items, lo + ITEM_CHUNK))]
            resp = await self.guard.call("item read", functools.partial(self.store.get_online_features_async, features=ITEM_REFS, entity_rows=rows),
                                    self.timeout_s * 4)
            d = resp.to_dict()
            for f in ITEM_FEATURES:
                cols[f].extend(d[f])
        return ItemTable.from_columns(self.n_items, cols)

    async def _refresh_items(self) -> None:
        self._items = await self._read_items()

    @staticmethod
    async def _keep(fn: Callable[[], Awaitable[object]], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await fn()
            except Exception as e:  # keep what we have; the next round tries again
                log.warning("feature store refresh failed (the cached copy stays): %s", getattr(e, "message", repr(e)))

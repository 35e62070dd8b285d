"""What the recsys data plane needs from a feature store, without naming one: a user's online row,
the item features (cached: they change only when Feast materializes), and a push of a user's new row.

``switchyard.worker_recsys.features.FeastFeatures`` implements ``FeatureSource`` on Feast (the only
module that imports feast); unit tests use an in-memory double. ``apply_event`` is how a live event
changes a user's row (docs/recsys.md, "Live events") and ``StoreGuard`` how a store call fails
(timeout, breaker, 503), kept here so that they are the same code whatever the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeVar

import numpy as np

from switchyard.common.breaker import Breaker, BreakerOpen
from switchyard.common.contracts import RecsysEventType
from switchyard.common.v2.errors import V2Error

log = logging.getLogger("switchyard.worker_recsys")

T = TypeVar("T")

Array = np.ndarray[Any, Any]

# Feast's feature views and features (infra/feast/definitions.py).
USER_FEATURES: Final = ("events_1d", "events_7d", "events_30d", "category_affinity", "top_category")
ITEM_FEATURES: Final = ("category", "age_days", "pop_1d", "pop_7d", "pop_30d")
HISTORY_LEN: Final = 200  # user_history.recent_items: the last 200 distinct items, newest first
# The retrieval matrix's event weights (build-support/train_recsys.py, EVENT_WEIGHT).
EVENT_WEIGHT: Final[dict[str, float]] = {"view": 1.0, "click": 2.0, "purchase": 4.0}
SMOOTHING: Final = 0.1  # category_affinity = (counts + 0.1) / (total + 0.1 * categories), gen_recsys_data.py


@dataclass(frozen=True)
class UserRow:
    """A user's online features: user_features, user_embedding and user_history."""

    events_1d: int
    events_7d: int
    events_30d: int
    category_affinity: Array  # float32 [categories]
    top_category: int  # -1: no event in 30 days
    embedding: Array  # float32 [dim]
    recent_items: Array = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64, newest first

    @classmethod
    def new(cls, categories: int, dim: int) -> UserRow:
        """A user the store has never seen: no events, uniform affinity, zero embedding."""
        return cls(0, 0, 0, np.full(categories, 1.0 / categories, dtype=np.float32), -1, np.zeros(dim, dtype=np.float32))


@dataclass(frozen=True)
class ItemTable:
    """Item features by dense item id (the row of the retrieval model); ``category`` -1 where the
    store has no row for an item (such an id is reported back as unknown)."""

    category: Array  # int64 [items]
    age_days: Array  # float32 [items]
    pop_1d: Array
    pop_7d: Array
    pop_30d: Array

    @classmethod
    def from_columns(cls, n_items: int, cols: dict[str, list[Any]]) -> ItemTable:
        """From Feast's ``to_dict()`` columns over item ids 0..n_items-1 (None where there is no row)."""
        def col(name: str, dtype: type, missing: float) -> Array:
            values = cols[name]
            assert len(values) == n_items, f"{name}: {len(values)} values for {n_items} items"
            return np.array([missing if v is None else v for v in values], dtype=dtype)

        return cls(category=col("category", np.int64, -1), **{f: col(f, np.float32, 0.0) for f in ITEM_FEATURES if f != "category"})

    @property
    def known(self) -> Array:
        return np.asarray(self.category >= 0)

    def __len__(self) -> int:
        return len(self.category)


class FeatureSource(Protocol):
    @property
    def items(self) -> ItemTable: ...

    async def user(self, user_id: int) -> UserRow | None:
        """The user's online row; None when the store has no row for the user (unknown user)."""

    async def push(self, user_id: int, row: UserRow) -> None:
        """Write the user's new row to the online store."""

    async def ready(self) -> bool: ...


def apply_event(row: UserRow, item_id: int, category: int, item_embedding: Array, event_type: RecsysEventType) -> UserRow:
    """``row`` after one more event on ``item_id``: counts + 1, the affinity with the event's category
    (the generator's smoothing inverted, one count added), the top category, the embedding folded in
    (``u += log1p(weight) * v_item``) and the item first in the history."""
    n = len(row.category_affinity)
    counts = row.category_affinity.astype(np.float64) * (row.events_30d + SMOOTHING * n) - SMOOTHING
    counts = np.clip(counts, 0.0, None)
    counts[category] += 1.0
    affinity = (counts + SMOOTHING) / (counts.sum() + SMOOTHING * n)
    history = np.concatenate([[item_id], row.recent_items[row.recent_items != item_id]])[:HISTORY_LEN].astype(np.int64)
    return replace(
        row,
        events_1d=row.events_1d + 1,
        events_7d=row.events_7d + 1,
        events_30d=row.events_30d + 1,
        category_affinity=affinity.astype(np.float32),
        top_category=int(np.argmax(counts)),
        embedding=(row.embedding + np.float32(np.log1p(EVENT_WEIGHT[event_type])) * item_embedding).astype(np.float32),
        recent_items=history,
    )


class StoreGuard:
    """Feature store calls with a timeout, behind a circuit breaker: while the store (Redis, the
    registry) fails, callers get a 503 with Retry-After at once instead of queueing behind timeouts."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    @property
    def open(self) -> bool:
        return self.breaker.state == "open"

    async def call(self, what: str, fn: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        try:
            async with self.breaker.guard():
                async with asyncio.timeout(timeout_s):
                    return await fn()
        except BreakerOpen as e:
            retry = max(1, math.ceil(e.retry_after_s))
            raise V2Error(503, f"feature store unavailable (circuit open after repeated failures; next try in {retry} s)", {"Retry-After": str(retry)}) from None
        except TimeoutError:
            raise self._unavailable(f"feature store {what} timed out after {timeout_s:g} s") from None
        except Exception as e:  # Redis refused or dropped the connection, the registry failed...
            log.warning("feature store %s failed: %r", what, e)
            raise self._unavailable(f"feature store {what} failed: {type(e).__name__}: {e}") from None

    def _unavailable(self, message: str) -> V2Error:
        return V2Error(503, message, {"Retry-After": str(max(1, math.ceil(self.breaker.retry_after_s() or self.breaker.reset_timeout_s)))})

"""The recsys worker's KServe V2 data plane: one user per request, the catalog's step graph
``features -> infer -> rank`` (switchyard.common.v2.config; tensors: switchyard.common.recsys).

- ``features``: the user's online row (one feature-store read per request), candidates from
  retrieval (the user's embedding against the item embeddings, numpy, seen items left out) or the
  request's own (unknown ids reported back, seen ones left out), and the ranker's feature matrix
  laid out as build-support/train_recsys.py trained it, with item features from the source's cache.
  An unknown user (no row in the store) gets the popularity fallback: the candidates (or the popular
  list) in popularity order; the ranker is not asked.
- ``infer``: the ranker on the step's backend (in-process onnxruntime or Triton).
- ``rank``: the k best, best first.

A ``StepPlane`` (switchyard.common.v2.step_plane: REST and gRPC front ends, request checks,
statistics, catalog reloads); the durable lane's activity calls the same ``infer``. Live events
(``record_event``) change the user's row in the store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from switchyard.common import metrics
from switchyard.common.contracts import MAX_CANDIDATES, MAX_RECOMMENDATIONS, RecsysEventCreate
from switchyard.common.recsys import CANDIDATES_INPUT
from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.config import Step, V2Config, V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.step_plane import StepPlane
from switchyard.common.v2.tensors import InferRequest, InferResponse, Tensor
from switchyard.worker_recsys.source import FeatureSource, ItemTable, UserRow, apply_event

Array = np.ndarray[Any, Any]

# The ranker's input columns (train_recsys.py FEATURES; ranker.onnx ``features`` [N, 10]); their
# order is read from training_report.json.
FEATURES: Final = frozenset({"retrieval_score", "item_pop_1d", "item_pop_7d", "item_pop_30d", "item_age_days", "item_category",
                             "user_category_affinity", "user_top_category_match", "user_events_7d", "user_events_30d"})
RETRIEVED, CANDIDATE, POPULAR = b"retrieved", b"candidate", b"popular"
# Popularity scores of a fallback request, handed from its features step to its infer step (not a tensor name).
_POPULARITY: Final = "#popularity"


@dataclass(frozen=True)
class RecsysModels:
    """The trained files the data plane reads (build-support/setup-recsys.sh writes them)."""

    item_embeddings: Array  # float32 [items, dim]: retrieval (u . v) and the fold-in of live events
    popular: Array  # int64: the unknown-user fallback, most popular first
    features: tuple[str, ...]  # the ranker's input columns, in order

    @classmethod
    def load(cls, model_dir: Path) -> RecsysModels:
        files = [model_dir / f for f in ("item_embeddings.npy", "popular_items.json", "training_report.json")]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"recsys model files not found: {', '.join(missing)} (run build-support/setup-recsys.sh)")
        report = json.loads(files[2].read_text())
        names = tuple(str(f["name"]) for f in report["ranker"]["features"])
        if set(names) != FEATURES or len(names) != len(FEATURES):
            raise ValueError(f"{files[2]}: ranker features {names} are not the ones this worker lays out ({sorted(FEATURES)})")
        return cls(np.ascontiguousarray(np.load(files[0]), dtype=np.float32), np.asarray(json.loads(files[1].read_text()), dtype=np.int64), names)


@dataclass
class _UserLock:
    lock: asyncio.Lock
    users: int = 0


class RecsysDataPlane(StepPlane):
    shape_note = "(one user per request)"

    def __init__(self, config: V2Config, backends: dict[str, InferBackend], source: FeatureSource, models: RecsysModels, model_dir: Path,
                 retrieve: int = 100) -> None:
        super().__init__("switchyard-worker-recsys", "recsys", backends, model_dir)
        self.source = source
        self.embeddings = models.item_embeddings
        self.popular = models.popular
        self.columns = {name: i for i, name in enumerate(models.features)}
        self.retrieve = retrieve  # candidates retrieval hands to the ranker
        self._user_locks: dict[int, _UserLock] = {}
        self.update(config)

    # ------------------------------------------------------------ health: the feature store too

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        return all(await asyncio.gather(self.source.ready(), super().model_ready(name, version)))

    async def ready(self) -> bool:
        return all(await asyncio.gather(self.source.ready(), super().ready()))

    # ------------------------------------------------------------ request checks

    def check_input(self, m: V2Model, t: Tensor) -> None:
        if t.data.size and int(t.data.min()) < 0:
            raise V2Error(400, f"input '{t.name}': ids are 0 or more, got {int(t.data.min())}")

    def inputs(self, m: V2Model, tensors: list[Tensor]) -> dict[str, Array]:
        values = super().inputs(m, tensors)
        cands = values.get(CANDIDATES_INPUT)
        if cands is not None and not 1 <= cands.size <= MAX_CANDIDATES:
            raise V2Error(400, f"input '{CANDIDATES_INPUT}': {cands.size} candidates; give 1 to {MAX_CANDIDATES} (or none: retrieval finds them)")
        return values

    @staticmethod
    def _params(m: V2Model, req: InferRequest) -> tuple[int, bool]:
        params = {**m.parameters, **req.parameters}
        k, exclude_seen = params.get("k", 10), params.get("exclude_seen", True)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_RECOMMENDATIONS:
            raise V2Error(400, f"parameter k must be an integer from 1 to {MAX_RECOMMENDATIONS}, got {k!r}")
        if not isinstance(exclude_seen, bool):
            raise V2Error(400, f"parameter exclude_seen must be true or false, got {exclude_seen!r}")
        return k, exclude_seen

    # ------------------------------------------------------------ steps

    async def _features(self, user_id: int, candidates: Array | None, exclude_seen: bool, values: dict[str, Array]) -> list[Array]:
        items = self.source.items
        known = items.known
        unknown = np.zeros(0, dtype=np.int64)
        cands: Array | None = None
        if candidates is not None:
            flat = candidates.reshape(-1).astype(np.int64, copy=False)
            _, first = np.unique(flat, return_index=True)
            flat = flat[np.sort(first)]  # duplicates dropped, request order kept
            ok = flat < len(items)
            ok[ok] = known[flat[ok]]
            unknown, cands = flat[~ok], flat[ok]
        row = await self.source.user(user_id)
        if row is None:  # unknown user: popularity fallback, the ranker is not asked
            pool = cands if cands is not None else self.popular[(self.popular < len(items))]
            pool = pool[known[pool]]
            values[_POPULARITY] = items.pop_7d[pool].astype(np.float32)
            return [np.zeros((len(pool), len(self.columns)), dtype=np.float32), pool, np.full(len(pool), POPULAR, dtype=object), unknown[None, :]]
        u = row.embedding.astype(np.float32, copy=False)
        seen = np.zeros(len(items), dtype=bool)
        if exclude_seen and row.recent_items.size:
            seen[row.recent_items[row.recent_items < len(items)]] = True  # a mask: np.isin costs ~0.3 ms here
        if cands is None:
            scores = self.embeddings @ u
            banned = ~known | seen
            scores[banned] = -np.inf
            n = min(self.retrieve, len(scores) - int(banned.sum()))
            cands = np.argpartition(-scores, n - 1)[:n] if n > 0 else np.zeros(0, dtype=np.int64)
            reason = RETRIEVED
            retrieval = scores[cands]
        else:
            cands = cands[~seen[cands]]
            reason = CANDIDATE
            retrieval = self.embeddings[cands] @ u
        return [self._matrix(items, row, cands, retrieval), cands.astype(np.int64, copy=False), np.full(len(cands), reason, dtype=object), unknown[None, :]]

    def _matrix(self, items: ItemTable, row: UserRow, cands: Array, retrieval: Array) -> Array:
        """The ranker's features for the user and each candidate, in the trained column order."""
        cat = items.category[cands]
        x = np.empty((len(cands), len(self.columns)), dtype=np.float32)
        c = self.columns
        x[:, c["retrieval_score"]] = retrieval
        x[:, c["item_pop_1d"]] = items.pop_1d[cands]
        x[:, c["item_pop_7d"]] = items.pop_7d[cands]
        x[:, c["item_pop_30d"]] = items.pop_30d[cands]
        x[:, c["item_age_days"]] = items.age_days[cands]
        x[:, c["item_category"]] = cat
        x[:, c["user_category_affinity"]] = row.category_affinity[cat]
        x[:, c["user_top_category_match"]] = cat == row.top_category
        x[:, c["user_events_7d"]] = row.events_7d
        x[:, c["user_events_30d"]] = row.events_30d
        return x

    async def _step(self, s: Step, values: dict[str, Array], k: int, exclude_seen: bool) -> list[Array]:
        args = [values.get(i) for i in s.inputs]
        if s.op == "features":
            assert args[0] is not None
            return await self._features(int(args[0].reshape(-1)[0]), args[1] if len(args) > 1 else None, exclude_seen, values)
        if s.op == "infer":
            assert s.backend is not None and args[0] is not None
            if _POPULARITY in values:
                return [values[_POPULARITY][:, None]]
            if not len(args[0]):
                return [np.zeros((0, 1), dtype=np.float32)]
            return [await self.backends[s.backend].infer(np.ascontiguousarray(args[0], dtype=np.float32))]
        if s.op == "rank":
            scores, ids, reasons = (np.asarray(a) for a in args)
            scores = scores.reshape(-1)
            best = np.argsort(-scores, kind="stable")[:k]  # ties keep the candidates' order (popularity list, request)
            return [ids[best][None, :], scores[best].astype(np.float32)[None, :], reasons[best][None, :]]
        raise V2Error(500, f"step {s.name}: op {s.op} is not implemented by the recsys worker")

    async def execute(self, req: InferRequest, m: V2Model) -> InferResponse:
        values = self.inputs(m, req.inputs)
        k, exclude_seen = self._params(m, req)
        wanted = self.wanted_outputs(m, req)
        for level in self.levels(m):
            for s in level:  # one user, one chain: nothing to run side by side
                values.update(zip(s.outputs, await self._step(s, values, k, exclude_seen), strict=True))
        resp = self.response(m, req, wanted, values)
        # Items ranked (candidates scored, or ordered by popularity): the domain's throughput.
        metrics.ITEMS.labels(domain="recsys", model=m.name).inc(len(values.get("candidate_ids", ())))
        return resp

    # ------------------------------------------------------------ live events

    @asynccontextmanager
    async def _user(self, user_id: int) -> AsyncIterator[None]:
        """One read-modify-push of a user's row at a time (this process is the only writer)."""
        entry = self._user_locks.setdefault(user_id, _UserLock(asyncio.Lock()))
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._user_locks[user_id]

    async def record_event(self, event: RecsysEventCreate) -> None:
        """Push the user's row after ``event``; the next request for the user reads it."""
        items = self.source.items
        if event.item_id >= len(items) or not items.known[event.item_id]:
            raise V2Error(400, f"item {event.item_id} is unknown to the feature store")
        category = int(items.category[event.item_id])
        async with self._user(event.user_id):
            row = await self.source.user(event.user_id) or UserRow.new(int(items.category.max()) + 1, self.embeddings.shape[1])
            await self.source.push(event.user_id, apply_event(row, event.item_id, category, self.embeddings[event.item_id], event.event_type))

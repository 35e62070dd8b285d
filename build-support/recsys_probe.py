"""Hand check of the recsys groundwork that build-support/setup-recsys.sh builds.

Run with the recsys venv's python, the same environment the setup script exports:

    SWITCHYARD_FEAST_REGISTRY_DSN=postgresql+psycopg://postgres@127.0.0.1:5432/switchyard_feast \\
    SWITCHYARD_FEAST_REDIS=127.0.0.1:6379 \\
    .cache/switchyard/recsys/venv/bin/python -O build-support/recsys_probe.py [--user 7] [-n 200] [--push]

Against the real Redis online store and the PostgreSQL registry it: reads the user's features and
embedding with Feast's async API (`await store.initialize()`, `get_online_features_async`), retrieves
100 candidates with retrieval.onnx, reads their item features, ranks them with ranker.onnx (onnxruntime,
in process) and prints the top 10, then times each step over -n rounds (p50/p99), with the item
features read from Feast per request and then cached in process (one bulk read; same top 10 required).
--push: pushes 10 live events in a category the user does not favour (both push sources), re-ranks and
shows that category moving up, then pushes the original rows back (newer timestamps) so a re-run sees
the same state. Exit status 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SWITCHYARD_CACHE_DIR", ROOT / ".cache" / "switchyard")) / "recsys"
REPO = ROOT / "infra" / "feast"
USER_FEATURES = ["events_1d", "events_7d", "events_30d", "category_affinity", "top_category"]
ITEM_FEATURES = ["category", "age_days", "pop_1d", "pop_7d", "pop_30d"]
N_CANDIDATES, TOP = 100, 10
PUSH_EVENTS, PUSH_WEIGHT = 10, 2.0  # ten clicks (train_recsys.EVENT_WEIGHT["click"])


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1e3, q))


class Recommender:
    def __init__(self, store: Any, models: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.retrieval = ort.InferenceSession(str(models / "retrieval.onnx"), opts, providers=["CPUExecutionProvider"])
        self.ranker = ort.InferenceSession(str(models / "ranker.onnx"), opts, providers=["CPUExecutionProvider"])
        self.report = json.loads((models / "training_report.json").read_text())
        self.feature_names = [f["name"] for f in self.report["ranker"]["features"]]
        self.store = store
        self.timings: dict[str, list[float]] = {"user_read": [], "retrieve": [], "item_read": [], "rank": [], "total": []}
        self.item_cache: dict[str, np.ndarray] | None = None  # item features by dense item id, when cached

    async def load_item_cache(self, n_items: int, chunk: int = 1000) -> None:
        """Item features change slowly (materialized daily/weekly): one bulk read replaces a Feast read per request."""
        cols: dict[str, list[Any]] = {f: [] for f in ITEM_FEATURES}
        for lo in range(0, n_items, chunk):
            resp = await self.store.get_online_features_async(
                features=[f"item_features:{f}" for f in ITEM_FEATURES], entity_rows=[{"item_id": i} for i in range(lo, min(n_items, lo + chunk))]
            )
            d = resp.to_dict()
            for f in ITEM_FEATURES:
                cols[f].extend(d[f])
        cat = np.array([c if c is not None else -1 for c in cols["category"]], dtype=np.int64)
        self.item_cache = {f: np.array([v if v is not None else 0 for v in cols[f]], dtype=np.float64) for f in ITEM_FEATURES}
        self.item_cache["category"] = cat

    async def item_rows(self, cands: np.ndarray) -> dict[str, Any]:
        if self.item_cache is not None:
            return {f: self.item_cache[f][cands] for f in ITEM_FEATURES}
        resp = await self.store.get_online_features_async(
            features=[f"item_features:{f}" for f in ITEM_FEATURES], entity_rows=[{"item_id": int(i)} for i in cands]
        )
        return dict(resp.to_dict())

    async def user_row(self, user_id: int) -> dict[str, Any]:
        resp = await self.store.get_online_features_async(
            features=[f"user_features:{f}" for f in USER_FEATURES] + ["user_embedding:embedding"], entity_rows=[{"user_id": user_id}]
        )
        return {k: v[0] for k, v in resp.to_dict().items()}

    async def recommend(self, user_id: int) -> list[tuple[int, float, int]]:
        t0 = time.perf_counter()
        u = await self.user_row(user_id)
        t1 = time.perf_counter()
        if u["embedding"] is None:
            raise SystemExit(f"user {user_id} has no online features: run build-support/setup-recsys.sh (feast materialize)")
        emb = np.asarray(u["embedding"], dtype=np.float32)[None, :]
        scores, ids = self.retrieval.run(["scores", "item_ids"], {"user_embedding": emb, "k": np.array([N_CANDIDATES], dtype=np.int64)})
        cands, cscores = ids[0], scores[0]
        t2 = time.perf_counter()
        it = await self.item_rows(cands)
        t3 = time.perf_counter()
        cat = np.array([c if c is not None else -1 for c in it["category"]], dtype=np.int64)
        aff = np.asarray(u["category_affinity"], dtype=np.float32)
        cols = {
            "retrieval_score": cscores,
            "item_pop_1d": it["pop_1d"],
            "item_pop_7d": it["pop_7d"],
            "item_pop_30d": it["pop_30d"],
            "item_age_days": it["age_days"],
            "item_category": cat,
            "user_category_affinity": np.where(cat >= 0, aff[cat.clip(0)], 0.0),
            "user_top_category_match": (cat == u["top_category"]).astype(np.float32),
            "user_events_7d": np.full(len(cands), u["events_7d"]),
            "user_events_30d": np.full(len(cands), u["events_30d"]),
        }
        x = np.column_stack([np.asarray(cols[f], dtype=np.float32) for f in self.feature_names])
        s = self.ranker.run(["score"], {"features": x})[0].ravel()
        order = np.argsort(-s, kind="stable")[:TOP]
        t4 = time.perf_counter()
        for k, v in zip(self.timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            self.timings[k].append(v)
        return [(int(cands[j]), float(s[j]), int(cat[j])) for j in order]


async def push_rows(store: Any, user_id: int, row: dict[str, Any], at: datetime) -> None:
    from feast.data_source import PushMode

    ts = pd.Timestamp(at)
    values = {**{f: row[f] for f in USER_FEATURES}, "category_affinity": np.asarray(row["category_affinity"], dtype=np.float32)}
    uf = pd.DataFrame({"user_id": [user_id], "event_timestamp": [ts], **{f: [v] for f, v in values.items()}})
    ue = pd.DataFrame([{"user_id": user_id, "event_timestamp": ts, "embedding": np.asarray(row["embedding"], dtype=np.float32)}])
    await store.push_async("user_events_push", uf, to=PushMode.ONLINE)
    await store.push_async("user_embedding_push", ue, to=PushMode.ONLINE)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", type=int, default=7)
    ap.add_argument("-n", type=int, default=200, help="timed rounds")
    ap.add_argument("--push", action="store_true", help="also check freshness through the push sources")
    ap.add_argument("--models", type=Path, default=CACHE / "models")
    args = ap.parse_args()
    for var in ("SWITCHYARD_FEAST_REGISTRY_DSN", "SWITCHYARD_FEAST_REDIS"):
        if not os.environ.get(var):
            raise SystemExit(f"{var} is not set (build-support/setup-recsys.sh prints the values it used)")
    t0 = time.perf_counter()
    from feast import FeatureStore  # ~4 s CPU (~1.2 s with python -O)

    store = FeatureStore(repo_path=str(REPO))
    await store.initialize()
    print(f"feast import + store init: {time.perf_counter() - t0:.2f} s")
    rec = Recommender(store, args.models)
    ok = True
    try:
        top = await rec.recommend(args.user)
        print(f"user {args.user}: top {TOP} of {N_CANDIDATES} candidates (item_id, score, category)")
        for item_id, score, cat in top:
            print(f"  {item_id:5d}  {score:+.4f}  cat {cat}")
        n_users, n_items = int(rec.report["data"]["users"]), int(rec.report["data"]["items"])
        for mode in ("item features read from Feast per request", "item features cached in process"):
            if rec.item_cache is None and mode.endswith("in process"):
                t_c = time.perf_counter()
                await rec.load_item_cache(n_items)
                print(f"item cache: {n_items} items in {time.perf_counter() - t_c:.2f} s")
                same = [i for i, _, _ in await rec.recommend(args.user)] == [i for i, _, _ in top]
                print(f"same top {TOP} with the cache: {same}")
                ok = ok and same
            for k in rec.timings:
                rec.timings[k].clear()
            for i in range(args.n):
                await rec.recommend((args.user + i) % n_users)
            print(f"{args.n} rounds over distinct users, {mode}, ms  p50 / p99:")
            for k, v in rec.timings.items():
                print(f"  {k:10s} {pct(v, 50):7.2f} / {pct(v, 99):7.2f}")

        if args.push:
            orig = await rec.user_row(args.user)
            aff = np.asarray(orig["category_affinity"], dtype=np.float64)
            new_cat = int(np.argsort(aff)[len(aff) // 2])  # a middling category for this user
            before = sum(c == new_cat for _, _, c in await rec.recommend(args.user))
            items = pd.read_parquet(CACHE / "data" / "items.parquet")
            pop = pd.read_parquet(CACHE / "data" / "item_features.parquet").groupby("item_id").pop_7d.last()
            in_cat = items[items.category == new_cat].item_id
            picked = pop.reindex(in_cat).fillna(0).sort_values(ascending=False).index[:PUSH_EVENTS].to_numpy()
            item_emb = np.load(args.models / "item_embeddings.npy")
            n30 = int(orig["events_30d"])
            counts = aff * (n30 + 0.1 * len(aff)) - 0.1  # invert the generator's smoothing
            counts[new_cat] += PUSH_EVENTS
            new_aff = (counts + 0.1) / (counts.sum() + 0.1 * len(aff))
            row = {
                **orig,
                "events_1d": orig["events_1d"] + PUSH_EVENTS,
                "events_7d": orig["events_7d"] + PUSH_EVENTS,
                "events_30d": n30 + PUSH_EVENTS,
                "category_affinity": new_aff.astype(np.float32),
                "top_category": int(np.argmax(new_aff)),
                "embedding": np.asarray(orig["embedding"], dtype=np.float32) + np.log1p(PUSH_EVENTS * PUSH_WEIGHT / len(picked)) * item_emb[picked].sum(axis=0),
            }
            now = datetime.now(UTC)
            t_push = time.perf_counter()
            await push_rows(store, args.user, row, now)
            push_ms = (time.perf_counter() - t_push) * 1e3
            after = sum(c == new_cat for _, _, c in await rec.recommend(args.user))
            await push_rows(store, args.user, orig, now + timedelta(seconds=1))  # restore
            restored = sum(c == new_cat for _, _, c in await rec.recommend(args.user))
            print(f"push {PUSH_EVENTS} events in category {new_cat} ({push_ms:.1f} ms): its items in the top {TOP}: {before} -> {after}; restored: {restored}")
            ok = ok and after > before and restored == before
    finally:
        await store.close()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

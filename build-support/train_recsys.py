"""Train and export the two recsys models, and evaluate them against popularity on held-out time.

Run in the recsys venv after gen_recsys_data.py (build-support/setup-recsys.sh does both):

    .cache/switchyard/recsys/venv/bin/python build-support/train_recsys.py [--data DIR] [--out DIR]

Method (times come from data/meta.json; T_label = test_start - 7 d, T_test = END - 7 d):
  * Retrieval: implicit-feedback matrix factorisation (PureSVD: truncated SVD of the user x item matrix
    of time-decayed, event-weighted log counts, item columns scaled by popularity^-0.25). DIM and the
    scaling were picked on the validation week [T_label, T_test), never on the test week. Item embeddings are V (items x D); a user's embedding is
    the fold-in r_u V, so a user with new events gets a new embedding without retraining. Score = u . v.
  * Ranker: LightGBM lambdarank on the top RETRIEVE candidates per user (seen items excluded), features
    from the Feast views' offline data at the snapshot time (the same columns the online store serves),
    plus the retrieval score. Trained on [T_label, T_test) with models fitted before T_label.
  * Evaluation on [T_test, END): models and features as of T_test; ground truth = items a user touched in
    that week and had not touched before; NDCG@10 and recall@50 (hits / |truth|) averaged over users,
    against popularity (all-time and last-7-days counts, seen items excluded, the better one is the bar).
  * Export (serving): SVD refitted on everything before END; the ranker as trained. ONNX files are
    checked against numpy / LightGBM before they are written.

Writes under --out: retrieval.onnx (user_embedding [N,D] + k [1] -> scores [N,k], item_ids [N,k]),
item_embeddings.npy, ranker.onnx (features [N,F] -> score [N,1]), popular_items.json, training_report.json;
and --data/user_embeddings.parquet (user_id, event_timestamp, embedding), the Feast `user_embedding` view.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from scipy.sparse.linalg import svds

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SWITCHYARD_CACHE_DIR", ROOT / ".cache" / "switchyard")) / "recsys"

DIM = 32
POP_BETA = 0.25  # item columns scaled by popularity^-beta before the SVD: less popularity bias
HALF_LIFE_DAYS = 21.0
EVENT_WEIGHT = {"view": 1.0, "click": 2.0, "purchase": 4.0}
RETRIEVE = 200  # candidates per user handed to the ranker
SEED = 13
# The ranker's input columns, in order; each names its source (Feast view:field, or the retrieval step).
FEATURES: list[tuple[str, str]] = [
    ("retrieval_score", "retrieval: u . v"),
    ("item_pop_1d", "item_features:pop_1d"),
    ("item_pop_7d", "item_features:pop_7d"),
    ("item_pop_30d", "item_features:pop_30d"),
    ("item_age_days", "item_features:age_days"),
    ("item_category", "item_features:category"),
    ("user_category_affinity", "user_features:category_affinity[item category]"),
    ("user_top_category_match", "user_features:top_category == item category"),
    ("user_events_7d", "user_features:events_7d"),
    ("user_events_30d", "user_features:events_30d"),
]


def interaction_matrix(inter: pd.DataFrame, before: datetime, n_users: int, n_items: int) -> sp.csr_matrix:
    past = inter[inter.event_timestamp < before]
    age = (pd.Timestamp(before) - past.event_timestamp).dt.total_seconds().to_numpy() / 86400.0
    w = past.event_type.map(EVENT_WEIGHT).to_numpy() * 0.5 ** (age / HALF_LIFE_DAYS)
    m = sp.coo_matrix((w, (past.user_id.to_numpy(), past.item_id.to_numpy())), shape=(n_users, n_items)).tocsr()
    m.data = np.log1p(m.data)
    return m


def fit_item_embeddings(r: sp.csr_matrix) -> np.ndarray:
    # svds is deterministic given v0; sort the factors by singular value for a stable layout.
    pop = np.asarray(r.sum(axis=0)).ravel() + 1.0
    v0 = np.random.default_rng(SEED).random(min(r.shape))
    _, s, vt = svds((r @ sp.diags(pop**-POP_BETA)).astype(np.float64), k=DIM, v0=v0)
    order = np.argsort(-s)
    return np.ascontiguousarray(vt[order].T.astype(np.float32))  # items x DIM


def seen_mask(inter: pd.DataFrame, before: datetime, n_users: int, n_items: int) -> sp.csr_matrix:
    past = inter[inter.event_timestamp < before]
    return sp.csr_matrix((np.ones(len(past)), (past.user_id, past.item_id)), shape=(n_users, n_items)).astype(bool)


def retrieve(user_emb: np.ndarray, item_emb: np.ndarray, banned: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items per user by u . v, `banned` (users x items bool) excluded. Returns (ids, scores), best first."""
    scores = user_emb @ item_emb.T
    scores[banned] = -np.inf
    top = np.argpartition(-scores, n, axis=1)[:, :n]
    s = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(s, order, axis=1)


def snapshot(df: pd.DataFrame, at: datetime, key: str) -> pd.DataFrame:
    rows = df[df.event_timestamp == pd.Timestamp(at)]
    assert len(rows), f"no feature snapshot at {at} (gen_recsys_data.py writes weekly ones)"
    return rows.set_index(key)


def pair_features(users: np.ndarray, cands: np.ndarray, cand_scores: np.ndarray, uf: pd.DataFrame, itf: pd.DataFrame) -> np.ndarray:
    """Feature matrix (len(users) * cands.shape[1], F) in FEATURES order, from one snapshot of each view."""
    k = cands.shape[1]
    u = np.repeat(users, k)
    i = cands.ravel()
    it = itf.reindex(i)  # unreleased items never reach here (banned in retrieval)
    cat = it.category.to_numpy().astype(np.int64)
    us = uf.reindex(u)
    aff = np.stack(list(us.category_affinity))[np.arange(len(u)), cat]
    x = np.column_stack(
        [
            cand_scores.ravel(),
            it.pop_1d,
            it.pop_7d,
            it.pop_30d,
            it.age_days,
            cat,
            aff,
            (us.top_category.to_numpy() == cat).astype(np.float32),
            us.events_7d,
            us.events_30d,
        ]
    ).astype(np.float32)
    assert x.shape[1] == len(FEATURES)
    return x


def truth_sets(inter: pd.DataFrame, start: datetime, end: datetime, seen: sp.csr_matrix) -> dict[int, set[int]]:
    win = inter[(inter.event_timestamp >= start) & (inter.event_timestamp < end)]
    out: dict[int, set[int]] = {}
    per_user = win.groupby("user_id")["item_id"].unique()
    for u, items in zip(per_user.index.to_numpy(dtype=np.int64), per_user.to_numpy(), strict=True):
        new = {int(i) for i in items if not seen[int(u), int(i)]}
        if new:
            out[int(u)] = new
    return out


def metrics(ranked: dict[int, np.ndarray], truth: dict[int, set[int]]) -> dict[str, float]:
    disc = 1.0 / np.log2(np.arange(2, 12))
    ndcg, recall = [], []
    for u, g in truth.items():
        r = ranked[u]
        hits10 = np.array([int(i) in g for i in r[:10]], dtype=np.float64)
        ndcg.append(float(hits10 @ disc[: len(hits10)]) / float(disc[: min(len(g), 10)].sum()))
        recall.append(sum(int(i) in g for i in r[:50]) / len(g))
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "recall@50": round(float(np.mean(recall)), 4), "users": len(truth)}


def retrieval_onnx(item_emb: np.ndarray) -> onnx.ModelProto:
    """user_embedding [N, D] float32, k [1] int64 -> scores [N, k] float32, item_ids [N, k] int64 (best first)."""
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["user_embedding", "item_embeddings_t"], ["all_scores"]),
            helper.make_node("TopK", ["all_scores", "k"], ["scores", "item_ids"], axis=1, largest=1, sorted=1),
        ],
        "recsys_retrieval",
        [
            helper.make_tensor_value_info("user_embedding", TensorProto.FLOAT, ["N", item_emb.shape[1]]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "K"]), helper.make_tensor_value_info("item_ids", TensorProto.INT64, ["N", "K"])],
        [numpy_helper.from_array(np.ascontiguousarray(item_emb.T), "item_embeddings_t")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="switchyard-train-recsys")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def ranker_onnx(model: lgb.LGBMRanker) -> onnx.ModelProto:
    from onnxmltools.convert import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    m: onnx.ModelProto = convert_lightgbm(model, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))], target_opset=15)
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = ["score" if o == old else o for o in node.output]
    m.graph.output[0].name = "score"
    m.graph.name = "recsys_ranker"  # onnxmltools picks a random uuid: keep the file reproducible
    onnx.checker.check_model(m)
    return m


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=CACHE / "data")
    ap.add_argument("--out", type=Path, default=CACHE / "models")
    args = ap.parse_args()
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    meta = json.loads((args.data / "meta.json").read_text())
    inter = pd.read_parquet(args.data / "interactions.parquet")
    items = pd.read_parquet(args.data / "items.parquet")
    ufeat = pd.read_parquet(args.data / "user_features.parquet")
    ifeat = pd.read_parquet(args.data / "item_features.parquet")
    n_users, n_items = int(meta["users"]), int(meta["items"])
    end = datetime.fromisoformat(meta["end"])
    t_label, t_test = datetime.fromisoformat(meta["label_start"]), datetime.fromisoformat(meta["test_start"])
    lap("load", t0)

    def banned_at(at: datetime) -> np.ndarray:
        unreleased = (items.created_at >= pd.Timestamp(at)).to_numpy()
        return seen_mask(inter, at, n_users, n_items).toarray() | unreleased[None, :]

    def stage(at: datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Models fitted before `at`: item embeddings, user embeddings, banned mask, candidates+scores."""
        r = interaction_matrix(inter, at, n_users, n_items)
        v = fit_item_embeddings(r)
        u = np.asarray(r @ v, dtype=np.float32)
        banned = banned_at(at)
        return v, u, banned, np.stack(retrieve(u, v, banned, RETRIEVE))

    # ---- ranker training data: models and features as of T_label, labels from [T_label, T_test)
    t0 = time.perf_counter()
    _, _, _, (cand_l, score_l) = stage(t_label)
    seen_l = seen_mask(inter, t_label, n_users, n_items)
    truth_l = truth_sets(inter, t_label, t_test, seen_l)
    users_l = np.array(sorted(truth_l), dtype=np.int64)
    cand_l = cand_l.astype(np.int64)
    x_l = pair_features(users_l, cand_l[users_l], score_l[users_l], snapshot(ufeat, t_label, "user_id"), snapshot(ifeat, t_label, "item_id"))
    y_l = np.array([int(i) in truth_l[int(u)] for u in users_l for i in cand_l[u]], dtype=np.int32)
    keep = y_l.reshape(len(users_l), RETRIEVE).any(axis=1)  # a query without a positive teaches lambdarank nothing
    x_l = x_l.reshape(len(users_l), RETRIEVE, -1)[keep].reshape(-1, len(FEATURES))
    y_l = y_l.reshape(len(users_l), RETRIEVE)[keep].ravel()
    lap("ranker_data", t0)

    def fit_ranker(**params: Any) -> lgb.LGBMRanker:
        model = lgb.LGBMRanker(objective="lambdarank", min_child_samples=20, max_bin=63, subsample=0.8, subsample_freq=1, colsample_bytree=0.9,
                               random_state=SEED, n_jobs=2, verbose=-1, deterministic=True, force_row_wise=True, **params)
        model.fit(x_l, y_l, group=[RETRIEVE] * int(keep.sum()), feature_name=[f for f, _ in FEATURES])
        return model

    t0 = time.perf_counter()
    ranker = fit_ranker(n_estimators=100, learning_rate=0.08, num_leaves=31)
    # The ranker's second version (ranker_v2.onnx, model recsys-rank-v2): more, smaller trees, learning
    # slower. The catalog shadows recsys-rank with it (docs/shadow.md): two versions to compare live.
    ranker_v2 = fit_ranker(n_estimators=200, learning_rate=0.05, num_leaves=15)
    lap("ranker_fit", t0)

    # ---- evaluation on [T_test, END) with models and features as of T_test
    t0 = time.perf_counter()
    _, _, banned_t, (cand_t, score_t) = stage(t_test)
    cand_t = cand_t.astype(np.int64)
    seen_t = seen_mask(inter, t_test, n_users, n_items)
    truth = truth_sets(inter, t_test, end, seen_t)
    users_t = np.array(sorted(truth), dtype=np.int64)
    x_t = pair_features(users_t, cand_t[users_t], score_t[users_t], snapshot(ufeat, t_test, "user_id"), snapshot(ifeat, t_test, "item_id"))
    rk_onnx = ranker_onnx(ranker)
    sess = ort.InferenceSession(rk_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    s_onnx = sess.run(["score"], {"features": x_t})[0].ravel()
    s_lgb = ranker.booster_.predict(x_t)
    # float32 thresholds in ONNX vs float64 in LightGBM: a value sitting on a split can take the other branch.
    diff = np.abs(s_onnx - s_lgb)
    onnx_max_abs_diff, onnx_rows_off = float(diff.max()), float(np.mean(diff > 1e-4))
    assert onnx_rows_off < 1e-3, f"ranker ONNX differs from LightGBM on {onnx_rows_off:.2%} of rows (max {onnx_max_abs_diff})"
    order = np.argsort(-s_onnx.reshape(len(users_t), RETRIEVE), axis=1, kind="stable")
    ranked_two_stage = {int(u): cand_t[u][order[j]] for j, u in enumerate(users_t)}
    rk2_onnx = ranker_onnx(ranker_v2)
    s_v2 = ort.InferenceSession(rk2_onnx.SerializeToString(), providers=["CPUExecutionProvider"]).run(["score"], {"features": x_t})[0].ravel()
    order_v2 = np.argsort(-s_v2.reshape(len(users_t), RETRIEVE), axis=1, kind="stable")
    ranked_v2 = {int(u): cand_t[u][order_v2[j]] for j, u in enumerate(users_t)}
    ranked_retrieval = {int(u): cand_t[u] for u in users_t}
    past = inter[inter.event_timestamp < t_test]
    pops = {
        "popularity_all_time": past.groupby("item_id").size(),
        "popularity_last_7d": past[past.event_timestamp >= t_test - timedelta(days=7)].groupby("item_id").size(),
    }
    results: dict[str, dict[str, float]] = {}
    for name, counts in pops.items():
        base = np.zeros(n_items)
        base[counts.index.to_numpy()] = counts.to_numpy()
        ranked = {}
        for u in users_t:
            s = np.where(banned_t[u], -np.inf, base)
            ranked[int(u)] = np.argsort(-s, kind="stable")[:50]
        results[name] = metrics(ranked, truth)
    results["retrieval_only"] = metrics(ranked_retrieval, truth)
    results["two_stage"] = metrics(ranked_two_stage, truth)
    results["two_stage_ranker_v2"] = metrics(ranked_v2, truth)
    bar = {m: max(results["popularity_all_time"][m], results["popularity_last_7d"][m]) for m in ("ndcg@10", "recall@50")}
    lift = {m: round(results["two_stage"][m] / bar[m] - 1.0, 4) for m in bar}
    lap("evaluate", t0)

    # ---- export for serving: SVD refitted on everything before END
    t0 = time.perf_counter()
    r_all = interaction_matrix(inter, end, n_users, n_items)
    v_all = fit_item_embeddings(r_all)
    u_all = np.asarray(r_all @ v_all, dtype=np.float32)
    rt = retrieval_onnx(v_all)
    rsess = ort.InferenceSession(rt.SerializeToString(), providers=["CPUExecutionProvider"])
    got_s, got_i = rsess.run(["scores", "item_ids"], {"user_embedding": u_all[:20], "k": np.array([50], dtype=np.int64)})
    want = u_all[:20] @ v_all.T
    assert np.allclose(got_s, np.take_along_axis(want, got_i, axis=1), atol=1e-4), "retrieval ONNX scores differ from numpy"
    assert np.allclose(got_s[:, 0], want.max(axis=1), atol=1e-4), "retrieval ONNX top-1 differs from numpy"
    args.out.mkdir(parents=True, exist_ok=True)
    onnx.save(rt, args.out / "retrieval.onnx")
    onnx.save(rk_onnx, args.out / "ranker.onnx")
    onnx.save(rk2_onnx, args.out / "ranker_v2.onnx")
    np.save(args.out / "item_embeddings.npy", v_all)
    pop_recent = inter[inter.event_timestamp >= end - timedelta(days=7)].groupby("item_id").size().sort_values(ascending=False, kind="stable")
    (args.out / "popular_items.json").write_text(json.dumps([int(i) for i in pop_recent.index[:1000]]) + "\n")
    pd.DataFrame(
        {
            "user_id": np.arange(n_users, dtype=np.int64),
            "event_timestamp": pd.Timestamp(end).as_unit("us"),
            "embedding": list(u_all),
        }
    ).to_parquet(args.data / "user_embeddings.parquet", index=False)
    lap("export", t0)

    importance = dict(zip([f for f, _ in FEATURES], (int(x) for x in ranker.booster_.feature_importance("gain")), strict=True))
    report: dict[str, Any] = {
        "generated_by": "build-support/train_recsys.py",
        "data": {k: meta[k] for k in ("seed", "users", "items", "categories", "interactions", "start", "end", "label_start", "test_start", "skew")},
        "retrieval": {
            "method": "PureSVD (truncated SVD of time-decayed log event-weighted counts), user = fold-in r_u V",
            "dim": DIM,
            "pop_beta": POP_BETA,
            "half_life_days": HALF_LIFE_DAYS,
            "event_weight": EVENT_WEIGHT,
            "candidates": RETRIEVE,
        },
        "ranker": {
            "method": "LightGBM lambdarank",
            "lightgbm": lgb.__version__,
            "trees": ranker.n_estimators,
            "v2": {"trees": ranker_v2.n_estimators, "learning_rate": ranker_v2.learning_rate, "num_leaves": ranker_v2.num_leaves, "file": "ranker_v2.onnx"},
            "train_queries": int(keep.sum()),
            "train_rows": len(y_l),
            "positives": int(y_l.sum()),
            "features": [{"name": f, "source": s} for f, s in FEATURES],
            "gain": importance,
            "onnx_max_abs_diff": onnx_max_abs_diff,
            "onnx_rows_differing": onnx_rows_off,
        },
        "evaluation": {
            "window": [t_test.isoformat(), end.isoformat()],
            "results": results,
            "bar": bar,
            "relative_lift_over_best_popularity": lift,
            "passes_10pct": all(v >= 0.10 for v in lift.values()),
        },
        "serving": {
            "retrieval.onnx": {"inputs": {"user_embedding": ["N", DIM], "k": [1]}, "outputs": {"scores": ["N", "k"], "item_ids": ["N", "k"]}},
            "ranker.onnx": {"inputs": {"features": ["N", len(FEATURES)]}, "outputs": {"score": ["N", 1]}},
            "user_embedding": "Feast view user_embedding:embedding (fold-in r_u V; recompute on new events)",
            "reference_time": end.isoformat(),
        },
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "onnxruntime": ort.__version__, "numpy": np.__version__},
        "timings_s": {**timings, "total": round(time.perf_counter() - t_all, 2)},
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"results": results, "lift": lift, "timings_s": report["timings_s"]}, indent=1))
    if not report["evaluation"]["passes_10pct"]:
        raise SystemExit(f"the two-stage model does not beat popularity by 10 % on both metrics: {lift}")


if __name__ == "__main__":
    main()

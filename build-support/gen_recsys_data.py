"""Deterministic synthetic interaction log and Feast offline data for the recsys domain.

Run in the recsys venv (build-support/setup-recsys.sh does it):

    .cache/switchyard/recsys/venv/bin/python build-support/gen_recsys_data.py [--out DIR] [--seed 13]

Same seed, same bytes. The log has the skew real logs have, so that popularity is a fair but beatable
baseline:
  * items: a Zipf-like long tail of base appeal (a few hits, thousands of rarely seen items), one of
    N_CATEGORIES categories (unequal sizes) and one of N_STYLES styles; 30 % are released during the
    log, and an item's appeal decays with its age (fresh items sell), so recent popularity moves.
  * users: activity from a Pareto law (a few very active users, many with a handful of events), a
    concentrated per-user category taste (Dirichlet, alpha 0.3) and a preferred style.
  * events: view / click / purchase, timestamped over DAYS days; a user's picks follow their taste
    (85 %) or the global mix (15 %), then appeal x freshness within the category.

Writes under --out (parquet, UTC timestamps):
  interactions.parquet   user_id, item_id, event_type, event_timestamp
  items.parquet          item_id, category, style, created_at
  user_features.parquet  weekly snapshots: user_id, event_timestamp, events_1d/7d/30d, category_affinity, top_category
  item_features.parquet  weekly snapshots: item_id, event_timestamp, category, age_days, pop_1d/7d/30d
  user_history.parquet   one snapshot at the log's end: user_id, event_timestamp, recent_items (the last
                         HISTORY_LEN distinct items, newest first; what the worker excludes as "seen")
  meta.json              sizes, seed, time range, snapshot times, the split times the training uses
user_id and item_id are dense indexes (0..N-1): the retrieval model's rows are item ids.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(os.environ.get("SWITCHYARD_CACHE_DIR", ROOT / ".cache" / "switchyard")) / "recsys" / "data"

N_USERS, N_ITEMS, N_CATEGORIES, N_STYLES = 2_000, 5_000, 12, 4
N_EVENTS, DAYS = 230_000, 63
START = datetime(2026, 8, 30, tzinfo=UTC)  # a Sunday: weekly snapshots fall on Sundays
END = START + timedelta(days=DAYS)
SNAPSHOT_EVERY_DAYS = 7
TEST_DAYS, LABEL_DAYS = 7, 7  # held-out last week; the week before labels the ranker's training
EVENT_TYPES = np.array(["view", "click", "purchase"])
EVENT_P = np.array([0.75, 0.2, 0.05])
HISTORY_LEN = 200  # Feast view user_history: the worker keeps the same bound when it pushes an event


def generate(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    # Items: Zipf-like base appeal over a random order, unequal category sizes, release dates.
    rank = rng.permutation(N_ITEMS) + 1
    appeal = 1.0 / rank**0.9
    cat_sizes = rng.dirichlet(np.full(N_CATEGORIES, 2.0))
    category = rng.choice(N_CATEGORIES, size=N_ITEMS, p=cat_sizes)
    style = rng.integers(0, N_STYLES, size=N_ITEMS)
    new = rng.random(N_ITEMS) < 0.3
    created_day = np.where(new, rng.uniform(0, DAYS, N_ITEMS), -rng.uniform(30, 365, N_ITEMS))

    # Users: Pareto activity (heavy head), concentrated taste, a preferred style.
    activity = rng.pareto(1.3, N_USERS) + 1.0
    n_user = np.clip(np.round(activity / activity.sum() * N_EVENTS), 3, 1_500).astype(np.int64)  # cap the bots
    taste = rng.dirichlet(np.full(N_CATEGORIES, 0.3), size=N_USERS)
    mixed = 0.85 * taste + 0.15 * cat_sizes[None, :]
    fav_style = rng.integers(0, N_STYLES, size=N_USERS)

    users = np.repeat(np.arange(N_USERS), n_user)
    n = users.size
    # Each user is active over a window of the log (some churn, some join late).
    u_start = rng.uniform(0, DAYS * 0.6, N_USERS)
    u_len = rng.uniform(DAYS * 0.4, DAYS, N_USERS)
    t = u_start[users] + rng.random(n) * np.minimum(u_len, DAYS - u_start)[users]
    cum = mixed.cumsum(axis=1)
    cat = (rng.random(n)[:, None] > cum[users]).sum(axis=1).clip(0, N_CATEGORIES - 1)
    want_style = np.where(rng.random(n) < 0.7, fav_style[users], rng.integers(0, N_STYLES, n))
    day = np.floor(t).astype(np.int64)

    items = np.empty(n, dtype=np.int64)
    # Sample within (day, category, style) groups: appeal x freshness of the items released by then.
    order = np.lexsort((want_style, cat, day))
    keys = np.stack([day[order], cat[order], want_style[order]], axis=1)
    bounds = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    for idx in np.split(order, bounds):
        d, c, s = day[idx[0]], cat[idx[0]], want_style[idx[0]]
        pool = np.flatnonzero((category == c) & (created_day <= d + 1))
        if pool.size == 0:
            pool = np.flatnonzero(created_day <= d + 1)
        age = np.maximum(d + 1 - created_day[pool], 0.0)
        w = appeal[pool] * (1.0 + 4.0 * np.exp(-age / 10.0)) * np.where(style[pool] == s, 3.0, 1.0)
        items[idx] = rng.choice(pool, size=idx.size, p=w / w.sum())

    ts = START + pd.to_timedelta(t, unit="D")
    inter = (
        pd.DataFrame(
            {
                "user_id": users.astype(np.int64),
                "item_id": items,
                "event_type": rng.choice(EVENT_TYPES, size=n, p=EVENT_P),
                "event_timestamp": pd.DatetimeIndex(ts).as_unit("us"),
            }
        )
        .sort_values(["event_timestamp", "user_id"], kind="stable")
        .reset_index(drop=True)
    )
    item_df = pd.DataFrame(
        {
            "item_id": np.arange(N_ITEMS, dtype=np.int64),
            "category": category.astype(np.int64),
            "style": style.astype(np.int64),
            "created_at": pd.DatetimeIndex(START + pd.to_timedelta(created_day, unit="D")).as_unit("us"),
        }
    )
    return inter, item_df


def user_features_at(inter: pd.DataFrame, items: pd.DataFrame, at: datetime) -> pd.DataFrame:
    """User features as of `at` (events strictly before it); the serving worker recomputes the same on push."""
    past = inter[inter.event_timestamp < at]
    out = pd.DataFrame({"user_id": np.arange(N_USERS, dtype=np.int64)})
    for days in (1, 7, 30):
        cnt = past[past.event_timestamp >= at - timedelta(days=days)].groupby("user_id").size()
        out[f"events_{days}d"] = out.user_id.map(cnt).fillna(0).astype(np.int64)
    recent = past[past.event_timestamp >= at - timedelta(days=30)]
    counts = np.zeros((N_USERS, N_CATEGORIES), dtype=np.float64)
    np.add.at(counts, (recent.user_id.to_numpy(), items.category.to_numpy()[recent.item_id.to_numpy()]), 1.0)
    aff = (counts + 0.1) / (counts.sum(axis=1, keepdims=True) + 0.1 * N_CATEGORIES)  # smoothed shares
    out["category_affinity"] = list(aff.astype(np.float32))
    out["top_category"] = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1).astype(np.int64)
    out["event_timestamp"] = pd.Timestamp(at).as_unit("us")
    return out


def item_features_at(inter: pd.DataFrame, items: pd.DataFrame, at: datetime) -> pd.DataFrame:
    past = inter[inter.event_timestamp < at]
    out = items[["item_id", "category"]].copy()
    out["age_days"] = ((pd.Timestamp(at) - items.created_at).dt.total_seconds() / 86400.0).astype(np.float32)
    for days in (1, 7, 30):
        cnt = past[past.event_timestamp >= at - timedelta(days=days)].groupby("item_id").size()
        out[f"pop_{days}d"] = out.item_id.map(cnt).fillna(0).astype(np.int64)
    out["event_timestamp"] = pd.Timestamp(at).as_unit("us")
    return out[items.created_at < at]  # an item unreleased at `at` has no row yet


def user_history_at(inter: pd.DataFrame, at: datetime) -> pd.DataFrame:
    """Every user's last HISTORY_LEN distinct items before `at`, newest first (empty: no events)."""
    past = inter[inter.event_timestamp < at].iloc[::-1]  # the log is time-ordered: newest first
    last = past.drop_duplicates(["user_id", "item_id"]).groupby("user_id", sort=False).head(HISTORY_LEN)
    lists = last.groupby("user_id", sort=False).item_id.agg(list)
    users = np.arange(N_USERS, dtype=np.int64)
    return pd.DataFrame(
        {"user_id": users, "event_timestamp": pd.Timestamp(at).as_unit("us"), "recent_items": [np.asarray(lists.get(u, []), dtype=np.int64) for u in users]}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    t0 = time.perf_counter()
    inter, items = generate(args.seed)
    snapshots = [START + timedelta(days=d) for d in range(SNAPSHOT_EVERY_DAYS, DAYS + 1, SNAPSHOT_EVERY_DAYS)]
    users_f = pd.concat([user_features_at(inter, items, s) for s in snapshots], ignore_index=True)
    items_f = pd.concat([item_features_at(inter, items, s) for s in snapshots], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    history = user_history_at(inter, END)  # no random draws: the other files keep their bytes
    for name, df in (("interactions", inter), ("items", items), ("user_features", users_f), ("item_features", items_f), ("user_history", history)):
        df.to_parquet(args.out / f"{name}.parquet", index=False)
    test_start = END - timedelta(days=TEST_DAYS)
    per_user = inter.groupby("user_id").size()
    item_pop = inter.groupby("item_id").size().sort_values(ascending=False)
    meta = {
        "seed": args.seed,
        "users": N_USERS,
        "items": N_ITEMS,
        "categories": N_CATEGORIES,
        "styles": N_STYLES,
        "interactions": len(inter),
        "start": START.isoformat(),
        "end": END.isoformat(),
        "snapshots": [s.isoformat() for s in snapshots],
        "label_start": (test_start - timedelta(days=LABEL_DAYS)).isoformat(),
        "test_start": test_start.isoformat(),
        "skew": {
            "top_1pct_users_share": round(float(per_user.sort_values(ascending=False).head(N_USERS // 100).sum() / len(inter)), 3),
            "top_1pct_items_share": round(float(item_pop.head(N_ITEMS // 100).sum() / len(inter)), 3),
            "items_never_seen": int(N_ITEMS - item_pop.size),
            "max_events_per_user": int(per_user.max()),
            "median_events_per_user": float(per_user.median()),
        },
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({**meta["skew"], "interactions": len(inter), "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()

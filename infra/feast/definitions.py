"""Feast objects of the recsys domain: entities, sources, feature views, the live-event push source.

`feast apply` (build-support/setup-recsys.sh) imports this file. The offline data it points at comes from
build-support/gen_recsys_data.py (user/item feature snapshots) and train_recsys.py (user embeddings);
train_recsys.py reads the same parquet columns, so the ranker trains on exactly what the online store
serves. Feast is imported only in the recsys venv (never in the Pants default resolve).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = Path(os.environ.get("SWITCHYARD_RECSYS_DATA") or (Path(os.environ.get("SWITCHYARD_CACHE_DIR", ROOT / ".cache" / "switchyard")) / "recsys" / "data"))
TTL = timedelta(days=365)  # offline point-in-time joins look this far back; online reads are not cut by it

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A user (dense id 0..N-1).")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="An item (dense id = retrieval row).")


def _parquet(name: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp")


# Live user events: the worker (POST /v1/recsys/events) recomputes the user's row from the current online
# row plus the event and pushes it here; Feast writes it to the online store (and offline with to="online_and_offline").
user_events_push = PushSource(name="user_events_push", batch_source=_parquet("user_features"))

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=TTL,
    schema=[
        Field(name="events_1d", dtype=Int64),
        Field(name="events_7d", dtype=Int64),
        Field(name="events_30d", dtype=Int64),
        Field(name="category_affinity", dtype=Array(Float32), description="Smoothed share of the last 30 days' events per category."),
        Field(name="top_category", dtype=Int64, description="Most frequent category in the last 30 days, -1 if none."),
    ],
    source=user_events_push,
    online=True,
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=TTL,
    schema=[
        Field(name="category", dtype=Int64),
        Field(name="age_days", dtype=Float32, description="Days since release at the snapshot (freshness)."),
        Field(name="pop_1d", dtype=Int64),
        Field(name="pop_7d", dtype=Int64),
        Field(name="pop_30d", dtype=Int64),
    ],
    source=_parquet("item_features"),
    online=True,
)

# A user's retrieval embedding is the fold-in r_u V: on a live event the worker adds the event's weight x
# the item's row of item_embeddings.npy and pushes the new vector here.
user_embedding_push = PushSource(name="user_embedding_push", batch_source=_parquet("user_embeddings"))

user_embedding = FeatureView(
    name="user_embedding",
    entities=[user],
    ttl=TTL,
    schema=[Field(name="embedding", dtype=Array(Float32), description="Retrieval fold-in r_u V (train_recsys.py).")],
    source=user_embedding_push,
    online=True,
)

# A user's last 200 distinct items, newest first: what exclude_seen leaves out. The batch source is one
# snapshot at the log's end (gen_recsys_data.py); on a live event the worker prepends the item (dropping
# an older copy, keeping 200) and pushes the new list here.
user_history_push = PushSource(name="user_history_push", batch_source=_parquet("user_history"))

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=TTL,
    schema=[Field(name="recent_items", dtype=Array(Int64), description="Last 200 distinct item ids, newest first.")],
    source=user_history_push,
    online=True,
)

recsys_ranker = FeatureService(name="recsys_ranker", features=[user_features, item_features, user_embedding, user_history])

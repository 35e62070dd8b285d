"""The recsys worker's data plane on the shipped catalog's recsys-rank step graph, over its REST app:
request checks (precise 400s), retrieval and ranking, candidates, unknown items, seen-item exclusion,
the unknown-user fallback, live events, the feature store guard (timeout, breaker, 503) and the
durable lane's activity (chunks, progress, checkpoint, retryable failures).

Feast itself runs only in the recsys venv (numpy 2); here an in-memory ``FakeFeatureStore`` (a test
double of Feast's online store) serves the rows, and ``SumRanker`` (a test double of ranker.onnx)
scores candidates by a known formula. The real store and model are tested in
tests/integration against the running stack.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from switchyard.common import recsys
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.breaker import Breaker
from switchyard.common.catalog import build_catalog
from switchyard.common.contracts import JobSpec, Recommendation, RecommendationQuery, RecsysEventCreate
from switchyard.common.v2 import grpc_frontend, rest_frontend
from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.errors import V2Error
from switchyard.worker_recsys import events
from switchyard.worker_recsys.activities import RecsysActivities
from switchyard.worker_recsys.dataplane import FEATURES, RecsysDataPlane, RecsysModels
from switchyard.worker_recsys.source import HISTORY_LEN, ItemTable, StoreGuard, UserRow, apply_event

CATALOG = build_catalog([Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"], env={})
MODEL = "recsys-rank"
N_ITEMS, DIM, CATEGORIES = 40, 4, 4
UNKNOWN_ITEM = 39  # the store has no features for it
# The ranker's columns in an order unlike the plane's code: the plane must follow the report.
ORDER = ("user_events_30d", "retrieval_score", "item_category", "item_pop_7d", "user_category_affinity", "item_pop_1d", "item_pop_30d",
         "item_age_days", "user_top_category_match", "user_events_7d")
EMBEDDINGS = np.random.default_rng(13).normal(size=(N_ITEMS, DIM)).astype(np.float32)
POPULAR = np.array([5, 100, UNKNOWN_ITEM, 3, 7, 1, 2], dtype=np.int64)  # 100: out of range, left out like UNKNOWN_ITEM


def items() -> ItemTable:
    ids = np.arange(N_ITEMS)
    category = (ids % CATEGORIES).astype(np.int64)
    category[UNKNOWN_ITEM] = -1
    pop = (N_ITEMS - ids).astype(np.float32)  # item 0 the most popular
    return ItemTable(category=category, age_days=ids.astype(np.float32), pop_1d=pop / 7, pop_7d=pop, pop_30d=pop * 4)


def user(embedding: list[float], seen: tuple[int, ...] | list[int] = ()) -> UserRow:
    return UserRow(events_1d=1, events_7d=5, events_30d=20, category_affinity=np.array([0.7, 0.1, 0.1, 0.1], dtype=np.float32), top_category=0,
                   embedding=np.array(embedding, dtype=np.float32), recent_items=np.array(seen, dtype=np.int64))


class FakeFeatureStore:
    """Test double of Feast's online store (FeastFeatures): rows in a dict; ``failing`` makes every
    call fail as an unreachable Redis would, through the same StoreGuard."""

    def __init__(self, users: dict[int, UserRow]) -> None:
        self.users = dict(users)
        self.pushed: list[tuple[int, UserRow]] = []
        self.failing = False
        self.reads = 0
        self.guard = StoreGuard(Breaker("feast-test", fail_max=2, reset_timeout_s=30))
        self._items = items()

    @property
    def items(self) -> ItemTable:
        return self._items

    async def _store(self) -> None:
        self.reads += 1
        if self.failing:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    async def user(self, user_id: int) -> UserRow | None:
        await self.guard.call("read", self._store, 0.5)
        return self.users.get(user_id)

    async def push(self, user_id: int, row: UserRow) -> None:
        await self.guard.call("push", self._store, 0.5)
        self.users[user_id] = row
        self.pushed.append((user_id, row))

    async def ready(self) -> bool:
        return not self.guard.open


class SumRanker:
    """Test double of ranker.onnx: score = retrieval_score + affinity/10; records what it was given."""

    name = "recsys-ranker-onnxruntime"

    def __init__(self) -> None:
        self.batches: list[np.ndarray[Any, Any]] = []

    async def infer(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        self.batches.append(batch)
        scores = batch[:, ORDER.index("retrieval_score")] + batch[:, ORDER.index("user_category_affinity")] / 10
        return np.asarray(scores[:, None], dtype=np.float32)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


# User 1 leans towards items whose embedding points along the first axis; user 2 has seen items.
U1 = [1.0, 0.5, 0.0, 0.0]
USERS = {1: user(U1), 2: user(U1, seen=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9])}


@pytest.fixture
def store() -> FakeFeatureStore:
    return FakeFeatureStore(USERS)


@pytest.fixture
def ranker() -> SumRanker:
    return SumRanker()


@pytest.fixture
def plane(store: FakeFeatureStore, ranker: SumRanker) -> RecsysDataPlane:
    backends: dict[str, InferBackend] = {"recsys-ranker-onnxruntime": ranker}
    return RecsysDataPlane(CATALOG.v2, backends, store, RecsysModels(EMBEDDINGS, POPULAR, ORDER), Path("."), retrieve=12)


@pytest_asyncio.fixture
async def client(plane: RecsysDataPlane) -> AsyncIterator[httpx.AsyncClient]:
    app = rest_frontend.create_app(plane, 1 << 20, grpc_frontend.tunnel(plane), extra_routes=events.routes(plane))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def recommend(client: httpx.AsyncClient, q: RecommendationQuery) -> Recommendation:
    r = await client.post(f"/v2/models/{MODEL}/infer", json=recsys.v2_json(q))
    assert r.status_code == 200, r.text
    return recsys.from_v2_json(q.user_id, r.json())


def expected_top(u: list[float], allowed: list[int], k: int) -> list[int]:
    cat = items().category
    score = {i: float(EMBEDDINGS[i] @ np.array(u, dtype=np.float32)) + float(USERS[1].category_affinity[cat[i]]) / 10 for i in allowed}
    return sorted(allowed, key=lambda i: -score[i])[:k]


# ---------------------------------------------------------------- request checks


def body(**change: Any) -> dict[str, Any]:
    b = recsys.v2_json(RecommendationQuery(user_id=1, candidates=[1, 2, 3]))
    for key, value in change.items():
        if key in ("k", "exclude_seen"):
            b["parameters"][key] = value
        else:
            b["inputs"] = [i for i in b["inputs"] if i["name"] != key] + ([value] if value is not None else [])
    return b


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


@pytest.mark.asyncio
@pytest.mark.parametrize(("change", "message"), [
    ({"k": 0}, "parameter k must be an integer from 1 to 100, got 0"),
    ({"k": 101}, "parameter k must be an integer from 1 to 100, got 101"),
    ({"k": "5"}, "parameter k must be an integer from 1 to 100, got '5'"),
    ({"k": True}, "parameter k must be an integer from 1 to 100, got True"),
    ({"exclude_seen": "yes"}, "parameter exclude_seen must be true or false, got 'yes'"),
    ({"candidates": tensor("candidates", "INT64", [1, 1001], list(range(1001)))}, "input 'candidates': 1001 candidates; give 1 to 1000"),
    ({"candidates": tensor("candidates", "INT64", [1, 0], [])}, "input 'candidates': 0 candidates; give 1 to 1000"),
    ({"candidates": tensor("candidates", "INT32", [1, 2], [1, 2])}, "input 'candidates': datatype INT32, model 'recsys-rank' expects INT64"),
    ({"candidates": tensor("candidates", "INT64", [2, 2], [1, 2, 3, 4])}, "input 'candidates': shape [2, 2] does not match [1, -1]"),
    ({"candidates": tensor("candidates", "INT64", [1, 2], [1, -2])}, "input 'candidates': ids are 0 or more, got -2"),
    ({"user_id": tensor("user_id", "FP32", [1], [1.0])}, "input 'user_id': datatype FP32, model 'recsys-rank' expects INT64"),
    ({"user_id": tensor("user_id", "INT64", [2], [1, 2])}, "input 'user_id': shape [2] does not match [1]"),
    ({"user_id": None}, "model 'recsys-rank' needs input(s) user_id"),
    ({"colour": tensor("colour", "INT64", [1], [1])}, "model 'recsys-rank' has no input 'colour' (inputs: user_id, candidates)"),
    ({"user_id": tensor("user_id", "INT64", [1], [1.5])}, "input 'user_id': data does not match datatype INT64"),
])
async def test_bad_requests_get_a_precise_400(client: httpx.AsyncClient, store: FakeFeatureStore, change: dict[str, Any], message: str) -> None:
    r = await client.post(f"/v2/models/{MODEL}/infer", json=body(**change))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(message)
    assert store.reads == 0  # refused before the feature store is asked


@pytest.mark.asyncio
async def test_unknown_output_and_unknown_model(client: httpx.AsyncClient) -> None:
    r = await client.post(f"/v2/models/{MODEL}/infer", json={**body(), "outputs": [{"name": "labels"}]})
    assert r.status_code == 400 and r.json()["error"].startswith("model 'recsys-rank' has no output 'labels'")
    r = await client.post("/v2/models/vision-classify/infer", json=body())  # another domain's model: not served here
    assert r.status_code == 404


# ---------------------------------------------------------------- ranking


@pytest.mark.asyncio
async def test_retrieval_then_ranker_gives_the_k_best_best_first(client: httpx.AsyncClient, ranker: SumRanker) -> None:
    rec = await recommend(client, RecommendationQuery(user_id=1, k=5))
    assert not rec.fallback and rec.unknown_items == []
    assert {i.reason for i in rec.items} == {"retrieved"}
    # Retrieval keeps the 12 best by u . v among items with features; the ranker re-scores them.
    u = np.array(U1, dtype=np.float32)
    retrieved = sorted((i for i in range(N_ITEMS) if i != UNKNOWN_ITEM), key=lambda i: -float(EMBEDDINGS[i] @ u))[:12]
    assert [i.item_id for i in rec.items] == expected_top(U1, retrieved, 5)
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    # The features reach the ranker in the trained column order.
    (batch,) = ranker.batches
    assert batch.shape == (12, len(FEATURES)) and batch.dtype == np.float32
    row = batch[0]
    item = int(np.flatnonzero(np.isclose(EMBEDDINGS @ u, row[ORDER.index("retrieval_score")]))[0])
    assert row[ORDER.index("item_category")] == item % CATEGORIES
    assert row[ORDER.index("item_pop_7d")] == N_ITEMS - item and row[ORDER.index("item_age_days")] == item
    assert row[ORDER.index("user_category_affinity")] == pytest.approx(USERS[1].category_affinity[item % CATEGORIES])
    assert row[ORDER.index("user_top_category_match")] == float(item % CATEGORIES == 0)
    assert (row[ORDER.index("user_events_7d")], row[ORDER.index("user_events_30d")]) == (5, 20)


@pytest.mark.asyncio
async def test_candidates_are_ranked_and_unknown_ones_reported(client: httpx.AsyncClient) -> None:
    cands = [12, UNKNOWN_ITEM, 3, 500, 7, 3, 20]
    rec = await recommend(client, RecommendationQuery(user_id=1, k=10, candidates=cands))
    assert rec.unknown_items == [UNKNOWN_ITEM, 500]
    assert {i.reason for i in rec.items} == {"candidate"}
    # Fewer than k candidates: all of them, once each, best first.
    assert [i.item_id for i in rec.items] == expected_top(U1, [12, 3, 7, 20], 10)


@pytest.mark.asyncio
async def test_seen_items_are_left_out_unless_asked_for(client: httpx.AsyncClient) -> None:
    seen = set(range(10))
    rec = await recommend(client, RecommendationQuery(user_id=2, k=20))
    assert len(rec.items) == 12 and not seen & {i.item_id for i in rec.items}
    rec = await recommend(client, RecommendationQuery(user_id=2, k=10, candidates=[1, 2, 15, 16]))
    assert [i.item_id for i in rec.items] == expected_top(U1, [15, 16], 10)
    rec = await recommend(client, RecommendationQuery(user_id=2, k=10, candidates=[1, 2, 15, 16], exclude_seen=False))
    assert [i.item_id for i in rec.items] == expected_top(U1, [1, 2, 15, 16], 10)


@pytest.mark.asyncio
async def test_unknown_user_gets_the_popular_items_flagged(client: httpx.AsyncClient, ranker: SumRanker) -> None:
    rec = await recommend(client, RecommendationQuery(user_id=999, k=4))
    assert rec.fallback and {i.reason for i in rec.items} == {"popular"}
    assert [i.item_id for i in rec.items] == [1, 2, 3, 5]  # the known popular items, by popularity
    rec = await recommend(client, RecommendationQuery(user_id=999, k=10, candidates=[30, 10, UNKNOWN_ITEM, 20]))
    assert rec.fallback and [i.item_id for i in rec.items] == [10, 20, 30] and rec.unknown_items == [UNKNOWN_ITEM]
    assert ranker.batches == []  # the ranker is not asked


@pytest.mark.asyncio
async def test_nothing_left_to_rank_is_an_empty_answer(client: httpx.AsyncClient, ranker: SumRanker) -> None:
    rec = await recommend(client, RecommendationQuery(user_id=2, candidates=[1, 2, UNKNOWN_ITEM]))
    assert rec.items == [] and rec.unknown_items == [UNKNOWN_ITEM] and not rec.fallback
    assert ranker.batches == []


@pytest.mark.asyncio
async def test_the_durable_lanes_request_gives_the_same_answer(client: httpx.AsyncClient, plane: RecsysDataPlane) -> None:
    """The job activity calls the plane in process with recsys.infer_request: same contract, same items."""
    q = RecommendationQuery(user_id=1, k=3, candidates=[4, 8, 15, 16, 23])
    resp = await plane.infer(recsys.infer_request(MODEL, q))
    in_process = recsys.from_outputs(1, {t.name: t.data for t in resp.outputs})
    assert in_process == await recommend(client, q)


# ---------------------------------------------------------------- live events


@pytest.mark.asyncio
async def test_an_event_updates_the_users_row_and_moves_its_category_up(client: httpx.AsyncClient, store: FakeFeatureStore) -> None:
    before = store.users[1]
    r = await client.post("/recsys/events", json={"user_id": 1, "item_id": 6, "event_type": "purchase"})
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": 1, "item_id": 6, "event_type": "purchase", "pushed": True}
    after = store.users[1]
    assert (after.events_1d, after.events_7d, after.events_30d) == (before.events_1d + 1, before.events_7d + 1, before.events_30d + 1)
    assert after.category_affinity[6 % CATEGORIES] > before.category_affinity[6 % CATEGORIES]
    assert after.category_affinity.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(after.embedding, before.embedding + np.log1p(4.0) * EMBEDDINGS[6], rtol=1e-6)
    assert after.recent_items.tolist() == [6]


def test_history_keeps_the_newest_distinct_items_first() -> None:
    row = replace(user(U1), recent_items=np.arange(HISTORY_LEN, dtype=np.int64))
    after = apply_event(row, 5, 1, EMBEDDINGS[5], "view")
    assert after.recent_items[:3].tolist() == [5, 0, 1] and len(after.recent_items) == HISTORY_LEN and (after.recent_items == 5).sum() == 1
    assert after.top_category == 0  # one view does not overturn a 70 % category
    many = row
    for _ in range(40):
        many = apply_event(many, 5, 1, EMBEDDINGS[5], "click")
    assert many.top_category == 1


@pytest.mark.asyncio
async def test_a_new_user_becomes_known_with_its_first_event(client: httpx.AsyncClient, store: FakeFeatureStore) -> None:
    assert (await recommend(client, RecommendationQuery(user_id=77))).fallback
    r = await client.post("/recsys/events", json={"user_id": 77, "item_id": 6})
    assert r.status_code == 200
    row = store.users[77]
    assert row.events_30d == 1 and row.top_category == 6 % CATEGORIES and row.recent_items.tolist() == [6]
    rec = await recommend(client, RecommendationQuery(user_id=77, k=5))
    assert not rec.fallback and 6 not in {i.item_id for i in rec.items}  # retrieved now, the seen item left out


@pytest.mark.asyncio
@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"user_id": 1, "item_id": UNKNOWN_ITEM}, 400, f"item {UNKNOWN_ITEM} is unknown to the feature store"),
    ({"user_id": 1, "item_id": 5000}, 400, "item 5000 is unknown to the feature store"),
    ({"user_id": 1, "item_id": 3, "event_type": "like"}, 400, "invalid event: event_type: Input should be 'view', 'click' or 'purchase'"),
    ({"user_id": -1, "item_id": 3}, 400, "invalid event: user_id: Input should be greater than or equal to 0"),
    ({"user_id": 1}, 400, "invalid event: item_id: Field required"),
    ({"user_id": 1, "item_id": 3, "weight": 2}, 400, "invalid event: weight: Extra inputs are not permitted"),
    ("{not json", 400, "invalid event: request body is not valid JSON"),
    ({"user_id": 1, "item_id": 3, "pad": "x" * 5000}, 413, "request body exceeds 4096 bytes"),
])
async def test_bad_events_are_refused(client: httpx.AsyncClient, store: FakeFeatureStore, payload: Any, status: int, message: str) -> None:
    r = await client.post("/recsys/events", content=payload if isinstance(payload, str) else json.dumps(payload))
    assert r.status_code == status and r.json() == {"error": message}
    assert store.pushed == []


@pytest.mark.asyncio
async def test_concurrent_events_of_one_user_all_count(plane: RecsysDataPlane, store: FakeFeatureStore) -> None:
    await asyncio.gather(*(plane.record_event(RecsysEventCreate(user_id=1, item_id=i)) for i in range(10, 20)))
    assert store.users[1].events_30d == USERS[1].events_30d + 10 and len(store.users[1].recent_items) == 10


# ---------------------------------------------------------------- feature store down


@pytest.mark.asyncio
async def test_a_failing_store_gets_503_then_the_breaker_answers_without_asking_it(client: httpx.AsyncClient, store: FakeFeatureStore) -> None:
    store.failing = True
    for _ in range(2):
        r = await client.post(f"/v2/models/{MODEL}/infer", json=body())
        assert r.status_code == 503 and "feature store read failed: ConnectionError" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 1
    reads = store.reads
    r = await client.post(f"/v2/models/{MODEL}/infer", json=body())
    assert r.status_code == 503 and "circuit open" in r.json()["error"] and 1 <= int(r.headers["retry-after"]) <= 30
    r = await client.post("/recsys/events", json={"user_id": 1, "item_id": 3})
    assert r.status_code == 503 and "circuit open" in r.json()["error"] and "retry-after" in r.headers
    assert store.reads == reads  # open: not asked
    assert (await client.get("/v2/health/ready")).status_code == 503


@pytest.mark.asyncio
async def test_a_store_call_that_hangs_times_out_as_503() -> None:
    guard = StoreGuard(Breaker("feast-test-timeout", fail_max=5, reset_timeout_s=5))
    with pytest.raises(V2Error) as e:
        await guard.call("read", lambda: asyncio.sleep(10), 0.05)
    assert e.value.status == 503 and e.value.message == "feature store read timed out after 0.05 s" and e.value.headers["Retry-After"] == "5"


# ---------------------------------------------------------------- the durable lane (recsys.rank)


class FakeBooks:
    """Test double of JobBookkeeping (PostgreSQL job rows, Redis event streams): records what the activity tells it."""

    def __init__(self, job_input: dict[str, Any]) -> None:
        self.input = job_input
        self.attempts = 0
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.bus = self

    async def job_input(self, spec: JobSpec) -> dict[str, Any]:
        return self.input

    async def start_attempt(self, spec: JobSpec, started_s: float) -> None:
        self.attempts += 1

    async def publish(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))


def job(users: list[int], **kw: Any) -> tuple[JobSpec, FakeBooks]:
    inp = {"users": users, "k": 3, **kw}
    return JobSpec(job_id="j1", domain="recsys", model=MODEL, input=inp, priority_key=0, accepted_at_ms=0.0), FakeBooks(inp)


@pytest.mark.asyncio
async def test_a_job_ranks_its_users_in_chunks_with_progress(plane: RecsysDataPlane) -> None:
    spec, books = job([1, 999, 2, 1])
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    result = await env.run(RecsysActivities(cast(JobBookkeeping, books), plane, chunk=3).rank, spec)
    assert [r.user_id for r in result.recommendations] == [1, 999, 2, 1]
    assert [r.fallback for r in result.recommendations] == [False, True, False, False]
    assert result.recommendations[0] == await plane_answer(plane, 1, k=3) and len(result.recommendations[1].items) == 3
    assert books.events == [("progress", {"done": 3, "total": 4}), ("progress", {"done": 4, "total": 4})]
    assert result.timings.engine_ms is not None and result.timings.engine_ms > 0


async def plane_answer(plane: RecsysDataPlane, user_id: int, **q: Any) -> Recommendation:
    resp = await plane.infer(recsys.infer_request(MODEL, RecommendationQuery(user_id=user_id, **q)))
    return recsys.from_outputs(user_id, {t.name: t.data for t in resp.outputs})


@pytest.mark.asyncio
async def test_a_retried_attempt_resumes_after_the_checkpoint(plane: RecsysDataPlane, store: FakeFeatureStore) -> None:
    spec, books = job([1, 2, 1])
    marker = Recommendation(user_id=1, items=[], fallback=False).model_dump()  # not what the plane would answer: proves it was kept
    env = ActivityEnvironment()
    env.info = replace(env.info, attempt=2, heartbeat_details=[[marker]])
    result = await env.run(RecsysActivities(cast(JobBookkeeping, books), plane, chunk=10).rank, spec)
    assert result.recommendations[0].items == [] and all(r.items for r in result.recommendations[1:])
    assert store.reads == 2 and books.events == [("progress", {"done": 3, "total": 3})]


@pytest.mark.asyncio
async def test_a_job_waits_while_the_store_is_down_and_refuses_a_foreign_model(plane: RecsysDataPlane, store: FakeFeatureStore) -> None:
    store.failing = True
    spec, books = job([1])
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(RecsysActivities(cast(JobBookkeeping, books), plane, chunk=10).rank, spec)
    assert e.value.type == "BackendUnavailable" and not e.value.non_retryable and "user 1: feature store read failed" in e.value.message
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(RecsysActivities(cast(JobBookkeeping, books), plane, chunk=10).rank, spec.model_copy(update={"model": "vision-classify"}))
    assert e.value.type == "UnknownModel" and e.value.non_retryable


# ---------------------------------------------------------------- model files


def test_model_files_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="item_embeddings.npy.*run build-support/setup-recsys.sh"):
        RecsysModels.load(tmp_path)
    np.save(tmp_path / "item_embeddings.npy", EMBEDDINGS)
    (tmp_path / "popular_items.json").write_text(json.dumps(POPULAR.tolist()))
    report = {"ranker": {"features": [{"name": n} for n in ORDER]}}
    (tmp_path / "training_report.json").write_text(json.dumps(report))
    models = RecsysModels.load(tmp_path)
    assert models.features == ORDER and models.item_embeddings.shape == (N_ITEMS, DIM) and models.popular.tolist() == POPULAR.tolist()
    report["ranker"]["features"][0] = {"name": "user_age"}
    (tmp_path / "training_report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="are not the ones this worker lays out"):
        RecsysModels.load(tmp_path)

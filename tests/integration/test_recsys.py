"""Recommendations against the running stack: the recsys worker on real Feast (PostgreSQL registry,
Redis online store), the ranker on onnxruntime in the worker and on Triton, through Nginx.

Covers the V2 model (REST with tritonclient.http, gRPC with tritonclient.grpc and its own protos),
``POST /v1/recommendations`` (k, reasons, seen-item exclusion, candidates, unknown items, the
popularity fallback), bad input, freshness through ``POST /v1/recsys/events``, the ``recsys`` job
domain, and Feast's Redis going away behind a fault-injecting proxy (fault_proxy.py).

The expectations come from the generated data (build-support/gen_recsys_data.py), read from its
parquet files with the recsys venv's pandas (the test environment has no parquet reader).
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import eventually  # pants: no-infer-dep
from fault_proxy import FaultProxy  # pants: no-infer-dep

from switchyard.devstack.client import JobClient
from switchyard.devstack.models import cache_dir
from switchyard.devstack.stack import Stack

MODELS = ["recsys-rank", "recsys-rank-triton"]
FEAST_PROJECT = "switchyard_recsys"
UNKNOWN_USER = 10**12  # no row in Feast
UNKNOWN_ITEM = 10**9  # not among the 5,000 items
PUSHED_EVENTS = 10

# What the tests need from the generated data: the most active users and a median one, each one's last 200 distinct
# items (Feast's user_history.recent_items), every item's category and last-week popularity, and
# the users' category affinities at the end of the log.
_DATA_SCRIPT = """
import json, sys
import pandas as pd
d = sys.argv[1]
inter = pd.read_parquet(f"{d}/interactions.parquet", columns=["user_id", "item_id", "event_timestamp"])
counts = inter.user_id.value_counts()
users = [int(u) for u in counts.index[:5]] + [int(counts.index[len(counts) // 2])]
seen = {}
for u in users:
    h = inter[inter.user_id == u].sort_values("event_timestamp", ascending=False, kind="stable").item_id.drop_duplicates()
    seen[u] = [int(i) for i in h[:200]]
items = pd.read_parquet(f"{d}/item_features.parquet").sort_values("event_timestamp").groupby("item_id").last().sort_index()
uf = pd.read_parquet(f"{d}/user_features.parquet")
aff = uf[uf.user_id.isin(users)].sort_values("event_timestamp").groupby("user_id").category_affinity.last()
print(json.dumps({"users": users, "seen": {str(u): s for u, s in seen.items()}, "category": [int(c) for c in items.category],
                  "pop_7d": [int(p) for p in items.pop_7d], "affinity": {str(u): [float(x) for x in a] for u, a in aff.items()}}))
"""


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    base = cache_dir() / "recsys"
    out = subprocess.run([str(base / "venv" / "bin" / "python"), "-c", _DATA_SCRIPT, str(base / "data")], check=True, capture_output=True, text=True, timeout=120)
    d: dict[str, Any] = json.loads(out.stdout)
    d["popular"] = json.loads((base / "models" / "popular_items.json").read_text())
    return d


@pytest.fixture(scope="module")
def users(data: dict[str, Any]) -> dict[str, int]:
    """Distinct users per test, so that one test's pushed events never reach another's: the most active
    ones (long histories to exclude), and for freshness a median one (ten clicks barely move a user
    with 1,500 events: their embedding and affinities are too heavy)."""
    u = data["users"]
    return {"reads": u[0], "grpc": u[1], "job": u[2], "job2": u[3], "down": u[4], "fresh": u[5]}


@pytest.fixture(scope="module")
def popular(data: dict[str, Any]) -> list[int]:
    """The popularity list (most popular first) as ids; popular_items.json may hold objects."""
    return [int(p["item_id"]) if isinstance(p, dict) else int(p) for p in data["popular"]]


@pytest.fixture(scope="module")
def http_client(stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_auth(api_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="module")
def http(stack: Stack, auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.ingress, headers=auth, timeout=30) as c:
        yield c


def v2_inputs(module: Any, user_id: int, candidates: list[int] | None = None) -> list[Any]:
    user = module.InferInput("user_id", [1], "INT64")
    user.set_data_from_numpy(np.array([user_id], dtype=np.int64))
    if candidates is None:
        return [user]
    cand = module.InferInput("candidates", [1, len(candidates)], "INT64")
    cand.set_data_from_numpy(np.array([candidates], dtype=np.int64))
    return [user, cand]


def ranked(result: Any) -> tuple[list[int], list[float], list[str]]:
    """(item ids, scores, reasons) of a V2 result, checking the tensor contract's shapes."""
    ids, scores, reasons = result.as_numpy("item_ids"), result.as_numpy("scores"), result.as_numpy("reasons")
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == scores.shape == reasons.shape and ids.shape[0] == 1
    return [int(i) for i in ids[0]], [float(s) for s in scores[0]], [r.decode() for r in reasons[0]]


def descending(scores: list[float]) -> bool:
    return all(a >= b for a, b in zip(scores, scores[1:], strict=False))


def recommend(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/recommendations", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def api_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code and err["message"], err
    return err


# ---------------------------------------------------------------- the V2 model


def test_v2_rest_ranks_the_same_on_onnxruntime_and_on_triton(http_client: httpclient.InferenceServerClient, auth: dict[str, str], users: dict[str, int],
                                                              popular: list[int]) -> None:
    """Both models run the same ranker.onnx: the same top k, the same scores (float32)."""
    answers = {}
    for model in MODELS:
        result = http_client.infer(model, v2_inputs(httpclient, users["reads"]), parameters={"k": 10, "exclude_seen": True}, headers=dict(auth))
        ids, scores, reasons = ranked(result)
        assert len(ids) == len(set(ids)) == 10 and descending(scores) and reasons == ["retrieved"] * 10, (model, ids, scores, reasons)
        assert result.as_numpy("unknown_items").size == 0
        with_cands = ranked(http_client.infer(model, v2_inputs(httpclient, users["reads"], popular[:100]), parameters={"k": 5, "exclude_seen": False},
                                              headers=dict(auth)))
        answers[model] = (ids, scores, with_cands)
    (ids_a, scores_a, cands_a), (ids_b, scores_b, cands_b) = answers.values()
    assert ids_a == ids_b and cands_a[0] == cands_b[0]
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-5)
    np.testing.assert_allclose(cands_a[1], cands_b[1], atol=1e-5)
    assert cands_a[2] == ["candidate"] * 5 and set(cands_a[0]) <= set(popular[:100])


def test_grpc_infer_with_tritonclient(grpc_client: grpcclient.InferenceServerClient, http_client: httpclient.InferenceServerClient,
                                      grpc_auth: dict[str, str], auth: dict[str, str], users: dict[str, int], popular: list[int]) -> None:
    """tritonclient.grpc (its own generated protos) gets what V2 REST gets."""
    cands = popular[:100] + [UNKNOWN_ITEM]
    for model in MODELS:
        result = grpc_client.infer(model, v2_inputs(grpcclient, users["grpc"], cands), parameters={"k": 10, "exclude_seen": False}, request_id="rec-1",
                                   headers=grpc_auth)
        assert result.get_response().id == "rec-1"
        ids, scores, reasons = ranked(result)
        assert len(ids) == 10 and descending(scores) and reasons == ["candidate"] * 10 and set(ids) <= set(popular[:100])
        assert result.as_numpy("unknown_items").tolist() == [[UNKNOWN_ITEM]]
        rest = http_client.infer(model, v2_inputs(httpclient, users["grpc"], cands), parameters={"k": 10, "exclude_seen": False}, headers=dict(auth))
        assert ranked(rest)[0] == ids


def test_model_metadata_and_configuration_show_the_optional_candidates(http_client: httpclient.InferenceServerClient,
                                                                       grpc_client: grpcclient.InferenceServerClient, auth: dict[str, str],
                                                                       grpc_auth: dict[str, str]) -> None:
    for model in MODELS:
        meta = http_client.get_model_metadata(model, headers=auth)
        assert meta["name"] == model
        assert meta["inputs"] == [{"name": "user_id", "datatype": "INT64", "shape": [1]}, {"name": "candidates", "datatype": "INT64", "shape": [1, -1]}]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("item_ids", "INT64"), ("scores", "FP32"), ("reasons", "BYTES"), ("unknown_items", "INT64")]
        config = http_client.get_model_config(model, headers=auth)
        assert {t["name"]: t.get("optional", False) for t in config["input"]} == {"user_id": False, "candidates": True}
        gconfig = grpc_client.get_model_config(model, headers=grpc_auth).config
        assert {t.name: t.optional for t in gconfig.input} == {"user_id": False, "candidates": True}
        assert http_client.is_model_ready(model, headers=auth) and grpc_client.is_model_ready(model, headers=grpc_auth)


# ---------------------------------------------------------------- /v1/recommendations


def test_recommendations_for_a_known_user(http: httpx.Client, http_client: httpclient.InferenceServerClient, auth: dict[str, str], users: dict[str, int],
                                          data: dict[str, Any]) -> None:
    user = users["reads"]
    rec = recommend(http, user_id=user, k=20)
    assert (rec["model"], rec["user_id"], rec["fallback"], rec["unknown_items"]) == ("recsys-rank", user, False, [])
    ids, scores = [i["item_id"] for i in rec["items"]], [i["score"] for i in rec["items"]]
    assert len(set(ids)) == 20 and descending(scores) and {i["reason"] for i in rec["items"]} == {"retrieved"}
    # The same model over V2 gives the same list.
    v2 = ranked(http_client.infer("recsys-rank", v2_inputs(httpclient, user), parameters={"k": 20, "exclude_seen": True}, headers=dict(auth)))
    assert v2[0] == ids
    assert recommend(http, user_id=user)["items"] == rec["items"][:10]  # k defaults to 10


def test_exclude_seen_leaves_out_the_users_recent_items(http: httpx.Client, users: dict[str, int], data: dict[str, Any], popular: list[int]) -> None:
    user = users["reads"]
    # The newest 150 of the 200 in Feast's history: clear of ties at the 200th.
    seen = set(data["seen"][str(user)][:150])
    fresh = [i["item_id"] for i in recommend(http, user_id=user, k=100)["items"]]
    assert fresh and not seen & set(fresh)
    again = [i["item_id"] for i in recommend(http, user_id=user, k=100, exclude_seen=False)["items"]]
    assert seen & set(again), "with exclude_seen false, retrieval finds items the user already touched (else the check above proves nothing)"
    # Candidates too: half seen, half not.
    unseen = [p for p in popular if p not in set(data["seen"][str(user)])][:50]
    cands = sorted(seen)[:50] + unseen
    kept = recommend(http, user_id=user, k=100, candidates=cands)
    assert {i["item_id"] for i in kept["items"]} == set(unseen) and {i["reason"] for i in kept["items"]} == {"candidate"}
    assert len(recommend(http, user_id=user, k=100, candidates=cands, exclude_seen=False)["items"]) == 100


def test_candidates_are_ranked_and_unknown_ones_reported(http: httpx.Client, users: dict[str, int], popular: list[int]) -> None:
    cands = [UNKNOWN_ITEM, *popular[:100], UNKNOWN_ITEM + 1]
    rec = recommend(http, user_id=users["reads"], k=100, candidates=cands, exclude_seen=False)
    assert sorted(rec["unknown_items"]) == [UNKNOWN_ITEM, UNKNOWN_ITEM + 1] and rec["fallback"] is False
    assert sorted(i["item_id"] for i in rec["items"]) == sorted(popular[:100])  # every known candidate, none invented
    assert {i["reason"] for i in rec["items"]} == {"candidate"} and descending([i["score"] for i in rec["items"]])
    assert [i["item_id"] for i in rec["items"]] != popular[:100], "ranked by the model, not passed through in popularity order"
    top3 = recommend(http, user_id=users["reads"], k=3, candidates=cands, exclude_seen=False)
    assert top3["items"] == rec["items"][:3]


def test_unknown_user_gets_the_popularity_fallback(http: httpx.Client, popular: list[int], data: dict[str, Any]) -> None:
    """Ordered by last-week popularity (the item features' pop_7d; ties: the popular list's order)."""
    def by_popularity(ids: list[int]) -> list[int]:
        return sorted(ids, key=lambda i: -data["pop_7d"][i])

    rec = recommend(http, user_id=UNKNOWN_USER, k=10)
    assert rec["fallback"] is True and {i["reason"] for i in rec["items"]} == {"popular"}
    assert [i["item_id"] for i in rec["items"]] == by_popularity(popular)[:10] and descending([i["score"] for i in rec["items"]])
    cands = [popular[30], popular[2], popular[11], UNKNOWN_ITEM]
    rec = recommend(http, user_id=UNKNOWN_USER, k=10, candidates=cands)
    assert [i["item_id"] for i in rec["items"]] == by_popularity(cands[:3]) and rec["unknown_items"] == [UNKNOWN_ITEM]
    assert rec["fallback"] is True and {i["reason"] for i in rec["items"]} == {"popular"}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user_id": 1, "k": 10, "surprise": True}, "surprise"),  # unknown field
        ({"user_id": "seven"}, "user_id"),
        ({"user_id": -1}, "user_id"),
        ({"user_id": 1, "k": "ten"}, "k"),
        ({"user_id": 1, "candidates": "1,2,3"}, "candidates"),
        ({"user_id": 1, "candidates": [1, "x"]}, "candidates.1"),
        ({"user_id": 1, "exclude_seen": "maybe"}, "exclude_seen"),
        ({"user_id": 1, "k": 0}, "k"),
        ({"user_id": 1, "k": 101}, "k"),
        ({"user_id": 1, "candidates": []}, "candidates"),
        ({"user_id": 1, "candidates": list(range(1001))}, "candidates"),
        ({"k": 10}, "user_id"),  # no user
    ],
)
def test_malformed_recommendation_requests_get_422(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    err = api_error(http.post("/v1/recommendations", json=body), 422, "validation_error")
    assert err["param"] == param, err


def test_unknown_models_and_missing_keys_or_scopes(stack: Stack, http: httpx.Client) -> None:
    api_error(http.post("/v1/recommendations", json={"user_id": 1, "model": "no-such-model"}), 404, "model_not_found")
    api_error(http.post("/v1/recommendations", json={"user_id": 1, "model": "vision-classify"}), 404, "model_not_found")  # another domain's model
    url = f"{stack.ingress}/v1/recommendations"
    api_error(httpx.post(url, json={"user_id": 1}), 401, "invalid_api_key")
    no_v2 = stack.create_key("tests", ("jobs", "openai"), "normal", "no v2 scope")
    api_error(httpx.post(url, json={"user_id": 1}, headers={"Authorization": f"Bearer {no_v2}"}), 403, "insufficient_scope")
    api_error(httpx.post(f"{stack.ingress}/v1/recsys/events", json={"user_id": 1, "item_id": 1}, headers={"Authorization": f"Bearer {no_v2}"}), 403,
              "insufficient_scope")
    api_error(http.post("/v1/recsys/events", json={"user_id": 1, "item_id": 1, "event_type": "like"}), 422, "validation_error")


USER_1 = {"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]}


@pytest.mark.parametrize(
    ("inputs", "parameters", "text"),
    [
        ([USER_1], {"k": 0}, "parameter k must be an integer from 1 to 100, got 0"),
        ([USER_1], {"k": 101}, "parameter k must be an integer from 1 to 100, got 101"),
        ([USER_1], {"exclude_seen": "yes"}, "parameter exclude_seen must be true or false"),
        ([USER_1, {"name": "candidates", "datatype": "INT64", "shape": [1, 1001], "data": list(range(1001))}], {}, "1001 candidates; give 1 to 1000"),
        ([{"name": "user_id", "datatype": "FP32", "shape": [1], "data": [1.0]}], {}, "datatype FP32, model 'recsys-rank' expects INT64"),
        ([{"name": "user_id", "datatype": "INT64", "shape": [2], "data": [1, 2]}], {}, "shape [2] does not match [1]"),
        ([{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [-3]}], {}, "ids are 0 or more"),
        ([{"name": "candidates", "datatype": "INT64", "shape": [1, 1], "data": [1]}], {}, "needs input(s) user_id"),
        ([USER_1, {"name": "item", "datatype": "INT64", "shape": [1], "data": [1]}], {}, "has no input 'item'"),
    ],
)
def test_malformed_v2_requests_get_400(http: httpx.Client, inputs: list[dict[str, Any]], parameters: dict[str, Any], text: str) -> None:
    r = http.post("/v2/models/recsys-rank/infer", json={"inputs": inputs, "parameters": parameters})
    assert r.status_code == 400 and set(r.json()) == {"error"} and text in r.json()["error"], r.text


def test_v2_unknown_model_is_404(http: httpx.Client) -> None:
    r = http.post("/v2/models/recsys-nope/infer", json={"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [1]}]})
    assert r.status_code == 404 and "unknown model" in r.json()["error"], r.text


# ---------------------------------------------------------------- freshness


def feast_user_key(user_id: int) -> bytes:
    """Feast's Redis key of a user's online rows (all views of the entity in one hash): the entity key
    serialized as Feast's entity_key_serialization_version 3 does, then the project name."""
    name = b"user_id"
    value = struct.pack("<q", user_id)
    return (struct.pack("<I", 1) + struct.pack("<II", 2, len(name)) + name  # 1 join key, ValueType.STRING, its length
            + struct.pack("<II", 4, len(value)) + value + FEAST_PROJECT.encode())  # ValueType.INT64


@pytest.fixture
def feast_redis(stack: Stack, feast_proxy: FaultProxy) -> Iterator[redis.Redis]:
    host, port = feast_proxy.target
    r = redis.Redis(host=host, port=port, db=feast_proxy.db)  # the real Redis, not through the proxy
    yield r
    r.close()


def test_events_in_a_new_category_move_it_up(http: httpx.Client, feast_redis: redis.Redis, users: dict[str, int], data: dict[str, Any]) -> None:
    """Ten clicks in a category the user barely touched: the next recommendations rank it higher.

    "Higher" is the category's discounted share of the user's top 100 (each of its items counts
    1/log2(1 + position), as NDCG counts a hit): more of its items, or the same ones nearer the top.
    The top 10 alone is too coarse a measure: whether a middling category reaches it after ten
    clicks depends on the ranker a host trained (LightGBM's fit differs between CPUs), while the
    category's rise through the list does not. An identical list scores the same and fails.

    An existing user (a fresh id has no taste to go against), whose Feast rows are put back byte for
    byte afterwards (Redis DUMP/RESTORE of the entity's hash), so the shared store ends as it began."""
    user = users["fresh"]
    key = feast_user_key(user)
    saved = feast_redis.dump(key)
    assert saved, f"user {user} has no Feast row at {key!r}: the key layout changed?"
    category = data["category"]
    aff = np.asarray(data["affinity"][str(user)])
    new_cat = int(np.argsort(aff)[len(aff) // 2])  # a middling category for this user
    seen = set(data["seen"][str(user)])
    in_cat = sorted((i for i, c in enumerate(category) if c == new_cat and i not in seen), key=lambda i: -data["pop_7d"][i])[:PUSHED_EVENTS]

    def standing() -> tuple[float, int, list[int]]:
        ids = [i["item_id"] for i in recommend(http, user_id=user, k=100)["items"]]
        hits = [pos for pos, i in enumerate(ids, start=1) if category[i] == new_cat]
        return round(sum(1 / math.log2(1 + pos) for pos in hits), 6), len(hits), ids

    before = standing()
    try:
        for item in in_cat:
            r = http.post("/v1/recsys/events", json={"user_id": user, "item_id": item, "event_type": "click"})
            assert r.status_code == 202 and r.json()["accepted"] is True, r.text
        after = standing()
        assert after[0] > before[0], (f"category {new_cat}: discounted share {before[0]} -> {after[0]}, items in the top 100 {before[1]} -> {after[1]} "
                                      f"({before[2][:20]} -> {after[2][:20]})")
        assert not set(in_cat) & set(after[2]), "the clicked items are now seen: excluded"
        bad = http.post("/v1/recsys/events", json={"user_id": user, "item_id": UNKNOWN_ITEM})
        assert bad.status_code == 400 and str(UNKNOWN_ITEM) in bad.json()["error"]["message"], bad.text
    finally:
        feast_redis.restore(key, 0, saved, replace=True)
    assert standing() == before


# ---------------------------------------------------------------- the recsys job domain


def test_batch_job_matches_the_realtime_answers(client: JobClient, http: httpx.Client, users: dict[str, int], popular: list[int]) -> None:
    batch = [users["job"], users["job2"], UNKNOWN_USER, users["job"]]
    cands = popular[:200] + [UNKNOWN_ITEM]
    job, events = client.run({"domain": "recsys", "model": "recsys-rank", "input": {"users": batch, "k": 5, "candidates": cands}})
    assert job["status"] == "succeeded", job
    recs = job["result"]["recommendations"]
    assert [r["user_id"] for r in recs] == batch
    for got in recs:
        want = recommend(http, user_id=got["user_id"], k=5, candidates=cands)
        assert (got["fallback"], got["unknown_items"]) == (want["fallback"], want["unknown_items"]) == (got["user_id"] == UNKNOWN_USER, [UNKNOWN_ITEM])
        assert [(i["item_id"], i["reason"]) for i in got["items"]] == [(i["item_id"], i["reason"]) for i in want["items"]]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], atol=1e-5)
    progress = [e.data for e in events if e.type == "progress"]
    assert progress and progress[-1] == {"done": len(batch), "total": len(batch)}
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]


def test_bad_recsys_jobs_are_refused_at_submission(client: JobClient) -> None:
    cases = [
        ({"domain": "recsys", "model": "no-such-model", "input": {"users": [1]}}, 404, "model_not_found"),
        ({"domain": "recsys", "model": "vision-classify", "input": {"users": [1]}}, 404, "model_not_found"),
        ({"domain": "recsys", "model": "recsys-rank", "input": {"users": []}}, 422, "validation_error"),
        ({"domain": "recsys", "model": "recsys-rank", "input": {"users": list(range(1001))}}, 422, "validation_error"),
        ({"domain": "recsys", "model": "recsys-rank", "input": {"users": [1], "k": 101}}, 422, "validation_error"),
        ({"domain": "recsys", "model": "recsys-rank", "input": {"users": [1], "user_id": 1}}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        api_error(client.http.post("/v1/jobs", json=body), status, code)


# ---------------------------------------------------------------- Feast's Redis down (last: it breaks the store for a while)


def test_feast_redis_down_realtime_503_and_jobs_wait(stack: Stack, feast_proxy: FaultProxy, client: JobClient, http: httpx.Client,
                                                     users: dict[str, int]) -> None:
    user = users["down"]
    want = recommend(http, user_id=user, k=5)
    turned_away = feast_proxy.refused + feast_proxy.closed
    feast_proxy.cut()
    try:
        answers = [http.post("/v1/recommendations", json={"user_id": user, "k": 5}) for _ in range(4)]
        assert all(r.status_code == 503 for r in answers), [(r.status_code, r.text) for r in answers]
        for r in answers:
            api_error(r, 503, r.json()["error"]["code"])
            assert int(r.headers["Retry-After"]) >= 1
        v2 = http.post("/v2/models/recsys-rank/infer", json={"inputs": [{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [user]}]})
        assert v2.status_code == 503 and set(v2.json()) == {"error"} and int(v2.headers["Retry-After"]) >= 1, v2.text
        assert feast_proxy.refused + feast_proxy.closed > turned_away, "the worker never reached the proxy: the cut proves nothing"
        job_id = client.submit({"domain": "recsys", "model": "recsys-rank", "input": {"users": [user], "k": 5}})
        time.sleep(3)
        assert client.get(job_id)["status"] in ("queued", "running")
    finally:
        feast_proxy.restore()
    eventually(lambda: http.post("/v1/recommendations", json={"user_id": user, "k": 5}).status_code == 200, "recommendations once Redis is back")
    assert recommend(http, user_id=user, k=5)["items"] == want["items"]

    def finished() -> bool:
        return client.get(job_id)["status"] in ("succeeded", "failed", "cancelled")

    eventually(finished, "the job to resume after Redis is back", 60)
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert job["result"]["recommendations"][0]["items"] == want["items"]

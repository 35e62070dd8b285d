"""``/v1/recommendations`` and ``/v1/recsys/events`` without the stack: body validation, keys and
scopes, the model lookup, and how the recsys worker's answers and failures reach the client.

The routes run in the API's own wiring (error handlers, request log, key check, body limit) with
the real V2 gateway (HTTP/1.1 client, circuit breaker) in front of a stand-in recsys worker: a
small uvicorn server that answers as the worker's contract says (docs/recsys.md), since the real
worker needs Feast, Redis and the trained models (tests/integration/test_recsys.py runs those).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from switchyard.api import errors
from switchyard.api.auth import Gatekeeper, KeyFirst
from switchyard.api.body_limit import BodyLimit
from switchyard.api.deps import resources_of
from switchyard.api.jobs.routes import KINDS
from switchyard.api.jobs.service import find_model
from switchyard.api.recsys import routes as recsys_routes
from switchyard.api.recsys.fast_path import RecommendationsFastPath
from switchyard.api.request_log import RequestLog, RequestWriter, family_of
from switchyard.api.settings import ApiSettings
from switchyard.api.v2.gateway import V2Gateway
from switchyard.common.catalog import CatalogHolder, build_catalog
from switchyard.common.contracts import RecommendationQuery
from switchyard.common.keys import Principal
from switchyard.common.recsys import v2_json
from switchyard.common.request_log import ENGINE_MS_HEADER, OVERHEAD_HEADER, RequestRecord, items_of

SHIPPED = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"
MAX_BODY = 64 * 1024
KEYS = {"k-v2": Principal("00000000-0000-0000-0000-000000000001", "tenant-a", {"v2"}),
        "k-jobs": Principal("00000000-0000-0000-0000-000000000002", "tenant-b", {"jobs", "openai"})}
V2_KEY = {"Authorization": "Bearer k-v2"}


# ---------------------------------------------------------------- the stand-in recsys worker


@dataclass
class StandInWorker:
    """Answers as the recsys worker would; ``mode`` picks the answer, ``seen`` keeps what it got."""

    mode: str = "ok"
    seen: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v2/models/{model}/infer")
        async def infer(model: str, request: Request) -> Response:
            body = await request.json()
            self.seen.append((request.url.path, dict(request.headers), body))
            if self.mode == "bad_request":
                return JSONResponse({"error": "candidates: at most 1000 items"}, status_code=400)
            if self.mode == "feast_down":
                return JSONResponse({"error": "the feature store is unavailable"}, status_code=503, headers={"Retry-After": "7"})
            if self.mode == "crash":
                return JSONResponse({"error": "internal error"}, status_code=500)
            if self.mode == "garbage":
                return JSONResponse({"outputs": [{"name": "item_ids", "data": [1, 2]}]})
            if self.mode == "list":
                return JSONResponse([1, 2])
            k = body["parameters"]["k"]
            user = body["inputs"][0]["data"][0]
            popular = user >= 1000  # the stand-in's unknown users
            outputs = [{"name": "item_ids", "datatype": "INT64", "shape": [1, k], "data": list(range(100, 100 + k))},
                       {"name": "scores", "datatype": "FP32", "shape": [1, k], "data": [float(k - i) for i in range(k)]},
                       {"name": "reasons", "datatype": "BYTES", "shape": [1, k], "data": ["popular" if popular else "retrieved"] * k},
                       {"name": "unknown_items", "datatype": "INT64", "shape": [1, 1], "data": [999999]}]
            return JSONResponse({"model_name": model, "outputs": outputs}, headers={ENGINE_MS_HEADER: "3.5"})

        @app.post("/recsys/events")
        async def events(request: Request) -> Response:
            body = await request.json()
            self.seen.append((request.url.path, dict(request.headers), body))
            if body["item_id"] >= 1000:
                return JSONResponse({"error": f"unknown item {body['item_id']}"}, status_code=400)
            if self.mode == "feast_down":
                return JSONResponse({"error": "Redis is unreachable"}, status_code=503, headers={"Retry-After": "7"})
            return JSONResponse({**body, "pushed": True})

        return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[StandInWorker, str]]:
    stand_in = StandInWorker()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(stand_in.app(), host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield stand_in, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------- the API's wiring around the routes


class StandInKeys:
    """The KeyStore's lookup over a fixed set of keys (no database)."""

    async def lookup(self, secret: str) -> Principal | None:
        return KEYS.get(secret)


class CapturingWriter(RequestWriter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[RequestRecord] = []

    def put(self, rec: RequestRecord) -> None:
        self.records.append(rec)


@dataclass
class Api:
    http: httpx.AsyncClient
    writer: CapturingWriter
    worker: StandInWorker
    gateway: V2Gateway


def _catalog() -> CatalogHolder:
    return CatalogHolder(build_catalog([SHIPPED], env={}), [SHIPPED])


def _app(upstreams: dict[str, Any], writer: RequestWriter, fast_path: bool = True, routes: bool = True) -> tuple[FastAPI, V2Gateway]:
    """The routes as app.create_app wires them (error shape, request log, key first, body limit, the
    recommendations fast path). For the parity test: the FastAPI routes alone (``fast_path=False``),
    or the fast path alone (``routes=False``)."""
    settings = ApiSettings(v2_upstreams=upstreams, breaker_fail_max=2, breaker_reset_s=60, v2_timeout_s=5, max_body_bytes=MAX_BODY)
    catalog = _catalog()
    gateway = V2Gateway(settings, catalog)
    gatekeeper = Gatekeeper()
    gatekeeper.keys = StandInKeys()  # type: ignore[assignment]
    app = FastAPI()
    app.state.gatekeeper = gatekeeper
    app.state.resources = SimpleNamespace(settings=settings, catalog=catalog, v2=gateway)
    errors.install(app)
    if routes:
        app.include_router(recsys_routes.router)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    app.add_middleware(KeyFirst, gatekeeper=gatekeeper)
    if fast_path:
        app.add_middleware(RecommendationsFastPath, gatekeeper=gatekeeper, max_bytes=MAX_BODY, resources_of=resources_of)
    app.add_middleware(errors.CatchUnexpected)
    app.add_middleware(RequestLog, writer=writer)
    return app, gateway


@pytest_asyncio.fixture
async def api(worker: tuple[StandInWorker, str]) -> AsyncIterator[Api]:
    stand_in, url = worker
    stand_in.mode, stand_in.seen[:] = "ok", []
    writer = CapturingWriter()
    app, gateway = _app({"recsys": {"http": url}}, writer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=V2_KEY) as http:
        yield Api(http, writer, stand_in, gateway)
    await gateway.close()


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) >= {"type", "code", "message", "param"} and err["code"] == code and err["message"], err
    return err


# ---------------------------------------------------------------- a recommendation


@pytest.mark.asyncio
async def test_a_recommendation_is_the_rankers_v2_inference(api: Api) -> None:
    r = await api.http.post("/v1/recommendations", json={"user_id": 7, "k": 3, "candidates": [100, 101, 102, 999999]}, headers={"X-Request-Id": "rid-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": 7, "model": "recsys-rank", "fallback": False, "unknown_items": [999999],
                        "items": [{"item_id": 100, "score": 3.0, "reason": "retrieved"}, {"item_id": 101, "score": 2.0, "reason": "retrieved"},
                                  {"item_id": 102, "score": 1.0, "reason": "retrieved"}]}
    [(path, headers, body)] = api.worker.seen
    assert path == "/v2/models/recsys-rank/infer"
    assert body == v2_json(RecommendationQuery(user_id=7, k=3, candidates=[100, 101, 102, 999999]))
    assert headers["x-request-id"] == "rid-1" and r.headers["x-request-id"] == "rid-1"
    assert ENGINE_MS_HEADER not in r.headers  # the worker's report stays in the platform
    assert float(r.headers[OVERHEAD_HEADER]) >= 0
    [rec] = api.writer.records
    assert (rec.family, rec.route, rec.model, rec.status, rec.tenant, rec.items, rec.engine_ms) == (
        "recsys", "/v1/recommendations", "recsys-rank", "200", "tenant-a", 3, 3.5)
    assert rec.params == {"k": 3, "exclude_seen": True, "candidates": 4}  # counts and switches, never the ids


@pytest.mark.asyncio
async def test_an_unknown_user_gets_the_flagged_fallback_and_defaults_apply(api: Api) -> None:
    r = await api.http.post("/v1/recommendations", json={"user_id": 123456})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is True and len(body["items"]) == 10 and {i["reason"] for i in body["items"]} == {"popular"}
    sent = api.worker.seen[0][2]
    assert sent["parameters"] == {"k": 10, "exclude_seen": True} and [i["name"] for i in sent["inputs"]] == ["user_id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user_id": 1, "surprise": 1}, "surprise"),  # unknown field
        ({"user_id": "one"}, "user_id"),
        ({"user_id": 1.5}, "user_id"),
        ({"user_id": -1}, "user_id"),
        ({"user_id": 2**63}, "user_id"),
        ({}, "user_id"),
        ({"user_id": 1, "k": 0}, "k"),
        ({"user_id": 1, "k": 101}, "k"),
        ({"user_id": 1, "k": "ten"}, "k"),
        ({"user_id": 1, "candidates": []}, "candidates"),
        ({"user_id": 1, "candidates": list(range(1001))}, "candidates"),
        ({"user_id": 1, "candidates": [1, "x"]}, "candidates.1"),
        ({"user_id": 1, "candidates": 5}, "candidates"),
        ({"user_id": 1, "exclude_seen": "maybe"}, "exclude_seen"),
        ({"user_id": 1, "model": ""}, "model"),
        ({"user_id": 1, "model": 5}, "model"),
    ],
)
@pytest.mark.asyncio
async def test_malformed_bodies_are_a_422_naming_the_field(api: Api, body: dict[str, Any], param: str) -> None:
    err = _error(await api.http.post("/v1/recommendations", json=body), 422, "validation_error")
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert api.worker.seen == []  # refused before the worker


@pytest.mark.parametrize(("content", "status", "code"), [(b"{", 400, "invalid_json"), (b"[]", 422, "validation_error"), (b"", 422, "validation_error")])
@pytest.mark.asyncio
async def test_bodies_that_are_not_an_object(api: Api, content: bytes, status: int, code: str) -> None:
    _error(await api.http.post("/v1/recommendations", content=content, headers={"content-type": "application/json"}), status, code)


@pytest.mark.asyncio
async def test_an_oversized_body_is_a_413(api: Api) -> None:
    big = json.dumps({"user_id": 1, "candidates": [10**17] * 4000}).encode()
    assert len(big) > MAX_BODY
    _error(await api.http.post("/v1/recommendations", content=big, headers={"content-type": "application/json"}), 413, "body_too_large")


@pytest.mark.parametrize("model", ["nope", "vision-classify", "smollm2-135m-instruct"])
@pytest.mark.asyncio
async def test_a_model_that_is_not_a_recsys_ranker_is_a_404(api: Api, model: str) -> None:
    err = _error(await api.http.post("/v1/recommendations", json={"user_id": 1, "model": model}), 404, "model_not_found")
    assert err["param"] == "model" and err["type"] == "not_found_error"
    assert api.worker.seen == []
    assert api.writer.records[0].model == ("unknown" if model == "nope" else model)  # client text never becomes a label


@pytest.mark.asyncio
async def test_the_triton_variant_is_served_through_the_same_worker(api: Api) -> None:
    r = await api.http.post("/v1/recommendations", json={"user_id": 1, "k": 2, "model": "recsys-rank-triton"})
    assert r.status_code == 200 and r.json()["model"] == "recsys-rank-triton"
    assert api.worker.seen[0][0] == "/v2/models/recsys-rank-triton/infer"


# The fast path (switchyard.api.recsys.fast_path) must answer every JSON request as the FastAPI route
# does: the same status, body (error shape, field, details) and headers that matter to clients.
PARITY: list[tuple[bytes, dict[str, str]]] = [
    (json.dumps({"user_id": 7, "k": 3, "candidates": [100, 101]}).encode(), {}),
    (json.dumps({"user_id": 1001, "exclude_seen": False}).encode(), {"content-type": "application/vnd.api+json"}),
    (json.dumps({"user_id": 1, "k": 0}).encode(), {}),
    (json.dumps({"user_id": "u1", "k": 101}).encode(), {}),
    (json.dumps({"user_id": 1, "candidates": list(range(1001))}).encode(), {}),
    (json.dumps({"user_id": 1, "candidates": [1, "x", None]}).encode(), {}),
    (json.dumps({"user_id": 1, "surprise": True}).encode(), {}),
    (json.dumps({"user_id": 1, "model": "vision-classify"}).encode(), {}),
    (json.dumps({"user_id": 1, "model": "nope"}).encode(), {}),
    (json.dumps({"user_id": 1, "model": 5}).encode(), {}),
    (b"{", {}), (b"[]", {}), (b"", {}), (b"null", {}), (b'"text"', {}),
    (json.dumps({"user_id": 1, "candidates": [10**17] * 4000}).encode(), {}),  # over the body limit
    (b"{not json", {"authorization": "Bearer wrong"}),
    (json.dumps({"user_id": 1}).encode(), {"authorization": ""}),
    (json.dumps({"user_id": 1}).encode(), {"authorization": "Bearer k-jobs"}),
]


@pytest.mark.parametrize(("content", "headers"), PARITY)
@pytest.mark.asyncio
async def test_the_fast_path_answers_as_the_route(worker: tuple[StandInWorker, str], content: bytes, headers: dict[str, str]) -> None:
    stand_in, url = worker
    stand_in.mode = "ok"
    answers = []
    for fast_path, routes in ((False, True), (True, False)):  # the route alone; the fast path alone (no route to fall back on)
        app, gateway = _app({"recsys": {"http": url}}, CapturingWriter(), fast_path=fast_path, routes=routes)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=V2_KEY) as http:
            r = await http.post("/v1/recommendations", content=content, headers={"content-type": "application/json", **headers})
        await gateway.close()
        answers.append((r.status_code, r.json(), {k: v for k, v in r.headers.items() if k in ("www-authenticate", "retry-after", "content-type")}))
    assert answers[0] == answers[1]


@pytest.mark.asyncio
async def test_a_body_not_declared_as_json_is_left_to_the_route(api: Api) -> None:
    """A form (curl -d without a content type) is the route's 422, not the fast path's business."""
    r = await api.http.post("/v1/recommendations", content=b"user_id=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert _error(r, 422, "validation_error")["param"] is None
    assert api.worker.seen == []


# ---------------------------------------------------------------- keys and scopes


@pytest.mark.parametrize(("path", "body"), [("/v1/recommendations", {"user_id": 1}), ("/v1/recsys/events", {"user_id": 1, "item_id": 2})])
@pytest.mark.asyncio
async def test_keys_and_the_v2_scope(api: Api, path: str, body: dict[str, Any]) -> None:
    r = await api.http.post(path, json=body, headers={"Authorization": ""})
    _error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    _error(await api.http.post(path, content=b"{not json", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")  # the key before the body
    _error(await api.http.post(path, json=body, headers={"Authorization": "Bearer k-jobs"}), 403, "insufficient_scope")
    assert api.worker.seen == []


# ---------------------------------------------------------------- the worker's answers and failures


@pytest.mark.asyncio
async def test_the_workers_4xx_comes_back_with_its_message(api: Api) -> None:
    api.worker.mode = "bad_request"
    err = _error(await api.http.post("/v1/recommendations", json={"user_id": 1}), 400, "invalid_input")
    assert err["message"] == "candidates: at most 1000 items" and err["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_feature_store_down_is_a_503_with_retry_after_then_the_breaker_answers(api: Api) -> None:
    api.worker.mode = "feast_down"
    for _ in range(2):  # breaker_fail_max
        r = await api.http.post("/v1/recommendations", json={"user_id": 1})
        err = _error(r, 503, "unavailable")
        assert err["message"] == "the feature store is unavailable" and r.headers["retry-after"] == "7"
    assert len(api.worker.seen) == 2
    r = await api.http.post("/v1/recommendations", json={"user_id": 1})  # open: refused without calling the worker
    _error(r, 503, "unavailable")
    assert int(r.headers["retry-after"]) >= 1 and len(api.worker.seen) == 2
    _error(await api.http.post("/v1/recsys/events", json={"user_id": 1, "item_id": 2}), 503, "unavailable")  # one worker, one breaker
    assert len(api.worker.seen) == 2
    assert [rec.status for rec in api.writer.records] == ["503"] * 4


@pytest.mark.asyncio
async def test_a_crashing_worker_is_a_502_and_an_unreadable_answer_too(api: Api) -> None:
    api.worker.mode = "crash"
    _error(await api.http.post("/v1/recommendations", json={"user_id": 1}), 502, "worker_error")
    for mode in ("garbage", "list"):
        api.worker.mode = mode
        _error(await api.http.post("/v1/recommendations", json={"user_id": 1}), 502, "bad_worker_answer")


@pytest.mark.asyncio
async def test_a_worker_that_is_down_or_not_configured_is_a_503() -> None:
    writer = CapturingWriter()
    for upstreams in ({"recsys": {"http": f"http://127.0.0.1:{_free_port()}"}}, {}):
        app, gateway = _app(upstreams, writer)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=V2_KEY) as http:
            for path, body in (("/v1/recommendations", {"user_id": 1}), ("/v1/recsys/events", {"user_id": 1, "item_id": 2})):
                r = await http.post(path, json=body)
                _error(r, 503, "unavailable")
                assert int(r.headers["retry-after"]) >= 1
        await gateway.close()


# ---------------------------------------------------------------- events


@pytest.mark.asyncio
async def test_an_event_is_pushed_and_accepted(api: Api) -> None:
    r = await api.http.post("/v1/recsys/events", json={"user_id": 3, "item_id": 42, "event_type": "purchase"}, headers={"X-Request-Id": "ev-1"})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": True, "user_id": 3, "item_id": 42, "event_type": "purchase"}
    [(path, headers, body)] = api.worker.seen
    assert path == "/recsys/events" and body == {"user_id": 3, "item_id": 42, "event_type": "purchase"} and headers["x-request-id"] == "ev-1"
    [rec] = api.writer.records
    assert (rec.family, rec.route, rec.status, rec.tenant, rec.model) == ("recsys", "/v1/recsys/events", "202", "tenant-a", "")
    r = await api.http.post("/v1/recsys/events", json={"user_id": 3, "item_id": 7})
    assert r.status_code == 202 and r.json()["event_type"] == "click"  # the default


@pytest.mark.parametrize(
    ("body", "param"),
    [({"user_id": 1, "item_id": 2, "event_type": "like"}, "event_type"), ({"user_id": 1}, "item_id"), ({"user_id": 1, "item_id": -2}, "item_id"),
     ({"user_id": 1, "item_id": 2, "extra": True}, "extra"), ({"user_id": [1], "item_id": 2}, "user_id")],
)
@pytest.mark.asyncio
async def test_malformed_events_are_a_422(api: Api, body: dict[str, Any], param: str) -> None:
    assert _error(await api.http.post("/v1/recsys/events", json=body), 422, "validation_error")["param"] == param
    assert api.worker.seen == []


@pytest.mark.asyncio
async def test_an_event_the_worker_refuses_is_its_400(api: Api) -> None:
    err = _error(await api.http.post("/v1/recsys/events", json={"user_id": 1, "item_id": 5000}), 400, "invalid_input")
    assert err["message"] == "unknown item 5000"


# ---------------------------------------------------------------- OpenAPI, request log, jobs


def test_the_routes_are_in_the_openapi_document_with_their_errors() -> None:
    app, _ = _app({}, CapturingWriter())
    doc = app.openapi()
    rec = doc["paths"]["/v1/recommendations"]["post"]
    ev = doc["paths"]["/v1/recsys/events"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "422", "429", "503"} <= set(rec["responses"])
    assert {"202", "400", "401", "403", "422", "503"} <= set(ev["responses"])
    body = doc["components"]["schemas"]["RecommendationRequest"]
    assert body["additionalProperties"] is False and body["properties"]["k"]["maximum"] == 100
    assert doc["components"]["schemas"]["RecsysEventCreate"]["properties"]["event_type"]["enum"] == ["view", "click", "purchase"]


def test_request_log_family_and_job_items() -> None:
    assert family_of("/v1/recommendations") == family_of("/v1/recsys/events") == "recsys"
    assert family_of("/v1/recommendationsx") is None
    result = {"recommendations": [{"user_id": 1, "items": [{}, {}], "fallback": False}, {"user_id": 2, "items": [{}], "fallback": True}]}
    assert items_of(result) == 3 and items_of({"recommendations": "x"}) is None


def test_recsys_jobs_need_a_recsys_ranker() -> None:
    res = SimpleNamespace(catalog=_catalog())
    assert find_model(res, "recsys-rank", "recsys", KINDS["recsys"]).name == "recsys-rank"  # type: ignore[arg-type]
    for name in ("vision-classify", "smollm2-135m-instruct"):
        with pytest.raises(errors.ApiError) as e:
            find_model(res, name, "recsys", KINDS["recsys"])  # type: ignore[arg-type]
        assert e.value.status == 404 and e.value.code == "model_not_found"

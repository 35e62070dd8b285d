"""The request log's pure parts: request id sanitising, parameters without text, the record's log
line and row, and the API's middleware and writer on a small real ASGI app."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from switchyard.api import request_log
from switchyard.api.request_log import RequestLog, RequestWriter, family_of
from switchyard.common.logs import _JsonFormatter
from switchyard.common.request_log import RequestRecord, endpoint_of, items_of, outcome_of, params_of, request_id, safe_params

PROMPT = "my secret prompt about Alice Example"


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize("given", ["abc", "req-1.2:3_X", "a" * 128, "0f1e2d3c4b5a69788796a5b4c3d2e1f0"])
def test_a_sane_client_id_is_kept(given: str) -> None:
    assert request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "a" * 129, "has space", "semi;colon", "new\nline", "é", "<script>", "a/b"])
def test_a_missing_or_hostile_id_is_replaced_by_a_new_one(given: str | None) -> None:
    rid = request_id(given)
    assert rid != given and len(rid) == 32 and int(rid, 16) >= 0
    assert request_id(given) != rid  # a fresh one each time


# ---------------------------------------------------------------- parameters and the record


def test_params_keep_numbers_and_switches_never_text() -> None:
    params = safe_params({"max_tokens": 16, "temperature": 0.2, "top_p": 1.0, "n": 2, "stream": True, "seed": None, "prompt": PROMPT,
                          "messages": [{"role": "user", "content": PROMPT}], "stop": ["Alice", "Example"], "user": "alice",
                          "images": ["aGVsbG8="], "top_k": 3, "temperature_text": "x"})
    assert params == {"max_tokens": 16, "temperature": 0.2, "top_p": 1.0, "n": 2, "stream": True, "stop_count": 2, "top_k": 3}
    assert PROMPT not in json.dumps(params) and "Alice" not in json.dumps(params)


def test_params_of_a_model_reads_attributes_only() -> None:
    class Body:
        max_tokens, temperature, stream, prompt, stop = 8, 0.0, False, PROMPT, "Alice"

    assert params_of(Body()) == {"max_tokens": 8, "temperature": 0.0, "stream": False, "stop_count": 1}


def test_record_log_fields_and_row_carry_no_text_and_never_a_negative_overhead() -> None:
    rec = RequestRecord("rid-1", "openai", "/v1/chat/completions", "POST", status="200", tenant="t", key_id=str(uuid.uuid4()), model="m",
                        params=safe_params({"max_tokens": 4, "prompt": PROMPT}), prompt_tokens=5, completion_tokens=4, engine_ms=12.0,
                        job_id=str(uuid.uuid4()))
    assert rec.overhead(10.0) == 0.0 and rec.overhead(15.5) == 3.5
    fields = rec.log_fields()
    assert set(fields) >= {"request_id", "family", "route", "method", "status", "tenant", "key_id", "model", "endpoint", "params", "prompt_tokens",
                           "completion_tokens", "items", "queue_ms", "ttft_ms", "engine_ms", "total_ms", "overhead_ms", "attempts", "priority",
                           "outcome", "job_id"}
    assert PROMPT not in json.dumps(fields)
    row = rec.row()
    assert row["job_id"] == uuid.UUID(rec.job_id or "") and isinstance(row["key_id"], uuid.UUID) and row["created_at"].tzinfo is not None
    rec.owns_job = False  # an idempotent replay: the job's row is the first request's
    assert rec.row()["job_id"] is None and rec.log_fields()["job_id"] == rec.job_id


@pytest.mark.parametrize(("status", "outcome"), [("200", "ok"), ("202", "ok"), ("401", "client_error"), ("499", "client_closed"),
                                                 ("503", "server_error"), ("OK", "ok"), ("UNAVAILABLE", "server_error"), ("NOT_FOUND", "client_error")])
def test_outcome_of_status(status: str, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_endpoint_label_and_items_from_a_job_result() -> None:
    spec = {"llm": {"endpoints": [{"engine": "vllm", "url": "http://a:1"}, {"engine": "llamacpp", "url": "http://b:2"}]}}
    assert endpoint_of({"endpoint": "llamacpp:http://b:2"}, spec) == "llamacpp-1"
    assert endpoint_of({"endpoint": "llamacpp:http://c:3"}, spec) is None and endpoint_of(None, spec) is None
    assert items_of({"predictions": [[], [], []]}) == 3 and items_of({"text": "x"}) is None


@pytest.mark.parametrize(("path", "family"), [("/v1/jobs", "jobs"), ("/v1/jobs/x/events", "jobs"), ("/v1/chat/completions", "openai"),
                                              ("/v1/completions", "openai"), ("/v1/embeddings", "openai"), ("/v1/models/m", "openai"),
                                              ("/v1/admin/keys", "admin"), ("/v1/usage", "admin"), ("/v2/models/m/infer", "v2_rest"), ("/v2", "v2_rest"),
                                              ("/v2/health/ready", None), ("/healthz", None), ("/metrics", None), ("/docs", None), ("/v1/nothing", None)])
def test_family_of_path(path: str, family: str | None) -> None:
    assert family_of(path) == family


# ---------------------------------------------------------------- the middleware and writer on a real ASGI app


class Kept(RequestWriter):
    def __init__(self) -> None:
        super().__init__()
        self.kept: list[RequestRecord] = []

    def put(self, rec: RequestRecord) -> None:
        self.kept.append(rec)


async def _completion(request: Request) -> Response:
    rec = request_log.current()
    rec.model, rec.completion, rec.engine_ms = "smollm", True, 1.0
    return JSONResponse({"ok": True})


async def _stream(request: Request) -> Response:
    rec = request_log.current()
    rec.completion, rec.stream, rec.engine_ms = True, True, 0.5

    async def body() -> Any:
        yield "data: 1\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _boom(request: Request) -> Response:
    raise RuntimeError("boom")


def _app(writer: RequestWriter) -> Any:
    app = Starlette(routes=[Route("/v1/chat/completions", _completion, methods=["POST"]), Route("/v1/jobs/{job_id}", _stream),
                            Route("/healthz", lambda r: Response("ok")), Route("/v1/admin/boom", _boom)])
    return RequestLog(app, writer)


async def _call(app: Any, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t") as c:
        return await c.request(method, path, headers=headers)


def test_middleware_answers_every_request_with_its_id_and_records_the_logged_ones() -> None:
    writer = Kept()
    app = _app(writer)

    async def run() -> list[httpx.Response]:
        return [await _call(app, "POST", "/v1/chat/completions", {"X-Request-Id": "client-1"}),
                await _call(app, "GET", "/v1/jobs/123", {"X-Request-Id": "bad id!"}),
                await _call(app, "GET", "/healthz")]

    completion, stream, health = asyncio.run(run())
    assert completion.headers["x-request-id"] == "client-1"
    overhead = float(completion.headers["x-switchyard-overhead-ms"])
    assert stream.headers["x-request-id"] != "bad id!" and len(stream.headers["x-request-id"]) == 32
    assert "x-switchyard-overhead-ms" not in stream.headers  # a stream records it in the log only
    assert len(health.headers["x-request-id"]) == 32  # not logged, still answered with an id
    assert [r.route for r in writer.kept] == ["/v1/chat/completions", "/v1/jobs/{job_id}"]  # templates, not raw paths
    c, s = writer.kept
    assert (c.family, c.status, c.outcome, c.model) == ("openai", "200", "ok", "smollm")
    assert c.ttft_ms is not None and c.total_ms is not None and c.overhead_ms is not None and 0 <= overhead == round(c.overhead_ms, 3) <= c.total_ms
    assert (s.family, s.status, s.request_id) == ("jobs", "200", stream.headers["x-request-id"]) and s.overhead_ms is not None


def test_a_crash_is_recorded_as_a_500() -> None:
    writer = Kept()
    r = asyncio.run(_call(_app(writer), "GET", "/v1/admin/boom"))
    assert r.status_code == 500 and len(r.headers["x-request-id"]) == 32
    assert [(r.family, r.status, r.outcome) for r in writer.kept] == [("admin", "500", "server_error")]


def test_writer_logs_one_json_line_per_record_without_text_and_drops_when_full(caplog: pytest.LogCaptureFixture) -> None:
    writer = RequestWriter(max_queue=2)
    for i in range(3):
        writer.put(RequestRecord(f"r{i}", "openai", "/v1/completions", "POST", status="200", params=safe_params({"prompt": PROMPT, "n": 1})))
    assert writer.dropped == 1
    caplog.set_level(logging.INFO, logger="switchyard.requests")
    asyncio.run(writer.flush())
    lines = [_JsonFormatter().format(r) for r in caplog.records if r.name == "switchyard.requests"]
    assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r1"]
    assert all(PROMPT not in line and json.loads(line)["params"] == {"n": 1} for line in lines)
    assert any("queue full" in r.getMessage() for r in caplog.records)

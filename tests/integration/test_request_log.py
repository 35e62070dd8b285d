"""The request log (REQ-OPS-02) on the real stack: X-Request-Id on every family's answers (and gRPC
metadata), carried API → Temporal → worker → engine, one JSON log line and one PostgreSQL row per
request without the prompt's text, a cut-off stream's tokens, X-Switchyard-Overhead-Ms, and
``GET /v1/usage`` per tenant and model.

The engine check puts a recording HTTP proxy (a test double, like a fault injector) in front of
the real llama.cpp engine, as a catalog model of its own (reload overlay): llama.cpp does not log
request headers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.server
import json
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from conftest import RELOAD_OVERLAY, eventually  # pants: no-infer-dep
from sqlalchemy import text
from tritonclient.grpc import service_pb2 as pb  # the protos the other suites load (ours would clash in one process)
from websockets.sync.client import connect as ws_connect

from switchyard.common.db.store import make_engine
from switchyard.devstack.client import LLM_MODEL, JobClient, llm_job
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import CATALOG_READERS, Stack

SECRET = "Zanzibar-lighthouse-keeper-7731"  # prompt text that must never reach a log line or a row
PROXIED_MODEL = "smollm2-reqlog-proxied"


def api_url(stack: Stack) -> str:
    """The API itself, without Nginx."""
    return f"http://127.0.0.1:{stack.cfg.api_port}"


def chat(max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"model": LLM_MODEL, "messages": [{"role": "user", "content": f"Say hello to {SECRET}."}], "max_tokens": max_tokens,
            "temperature": 0, "seed": 3, **extra}


def api_log_lines(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    path = stack.cfg.state_dir / "logs" / "api.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if request_id in line and '"switchyard.requests"' in line:
            out.append(json.loads(line))
    return out


def raw_log_lines(stack: Stack, request_id: str) -> list[str]:
    return [line for line in (stack.cfg.state_dir / "logs" / "api.log").read_text(errors="replace").splitlines() if request_id in line]


async def _rows(stack: Stack, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    engine = make_engine(stack.cfg.postgres_dsn)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(f"SELECT *, row_to_json(requests)::text AS everything FROM requests WHERE {where} ORDER BY id"), params)
            return [dict(r) for r in rows.mappings()]
    finally:
        await engine.dispose()


def rows(stack: Stack, where: str, **params: Any) -> list[dict[str, Any]]:
    return asyncio.run(_rows(stack, where, params))


def one_row(stack: Stack, request_id: str) -> dict[str, Any]:
    eventually(lambda: len(rows(stack, "request_id = :r", r=request_id)) == 1, f"the row of request {request_id}", timeout_s=10)
    return rows(stack, "request_id = :r", r=request_id)[0]


# ---------------------------------------------------------------- request ids on every family


def v2_infer_body(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A V2 REST infer request with the images as a binary BYTES tensor (each: 4-byte length + bytes)."""
    blob = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "labels", "parameters": {"binary_data": False}}]}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def image() -> bytes:
    return sample_images()["flower"]


def test_every_family_answers_with_a_request_id(stack: Stack, auth: dict[str, str], image: bytes) -> None:
    with httpx.Client(base_url=stack.ingress, timeout=120) as c:
        answers = {
            "jobs": c.post("/v1/jobs", json=llm_job(max_tokens=2), headers=auth),
            "openai": c.post("/v1/chat/completions", json=chat(2), headers=auth),
            "models": c.get("/v1/models", headers=auth),
            "no key (401)": c.post("/v1/jobs", json=llm_job()),
            "invalid (422)": c.post("/v1/jobs", json={"domain": "llm", "model": LLM_MODEL, "input": {}}, headers=auth),
            "v2 metadata": c.get("/v2/models/vision-classify", headers=auth),
            "v2 without key (401)": c.post("/v2/models/vision-classify/infer", content=b"{}"),
        }
        with c.stream("POST", "/v1/chat/completions", json=chat(2, stream=True), headers=auth) as s:
            s.read()
            answers["openai streamed"] = s
        body, headers = v2_infer_body([image])
        answers["v2 infer"] = c.post("/v2/models/vision-classify/infer", content=body, headers={**auth, **headers})
    statuses = {k: r.status_code for k, r in answers.items()}
    assert statuses == {"jobs": 202, "openai": 200, "models": 200, "no key (401)": 401, "invalid (422)": 422, "v2 metadata": 200,
                        "v2 without key (401)": 401, "openai streamed": 200, "v2 infer": 200}
    ids = {k: r.headers.get("x-request-id") for k, r in answers.items()}
    assert all(i and len(i) <= 128 for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids)  # one per request
    # The worker's report of its compute time never reaches the client.
    assert "x-switchyard-engine-ms" not in answers["v2 infer"].headers and "x-switchyard-items" not in answers["v2 infer"].headers


def test_grpc_answers_with_the_request_id_and_overhead_in_initial_metadata(stack: Stack, api_key: str, image: bytes) -> None:
    req = pb.ModelInferRequest(model_name="vision-classify", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[image]))])
    with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        started = time.perf_counter()
        _, call = infer.with_call(req, metadata=[("authorization", f"Bearer {api_key}"), ("x-request-id", "grpc-client-id-1")], timeout=60)
        total_ms = (time.perf_counter() - started) * 1000
        md = dict(call.initial_metadata())
        assert md["x-request-id"] == "grpc-client-id-1"
        assert 0 <= float(md["x-switchyard-overhead-ms"]) <= total_ms
        with pytest.raises(grpc.RpcError) as refused:  # no key: still an id, in the initial metadata
            infer.with_call(req, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(dict(refused.value.initial_metadata())["x-request-id"]) == 32
    row = one_row(stack, "grpc-client-id-1")
    assert (row["family"], row["route"], row["status"], row["model"], row["tenant"], row["items"]) == ("v2_grpc", "ModelInfer", "OK", "vision-classify", "tests", 1)
    assert row["engine_ms"] > 0 and 0 <= row["overhead_ms"] <= row["total_ms"]


def test_the_websocket_handshake_answers_with_the_request_id(stack: Stack, auth: dict[str, str]) -> None:
    job_id = JobClient(api_url(stack)).http.post("/v1/jobs", json=llm_job(max_tokens=2), headers=auth).json()["id"]
    url = api_url(stack).replace("http://", "ws://") + f"/v1/jobs/{job_id}/ws"
    with ws_connect(url, open_timeout=10, additional_headers={**auth, "X-Request-Id": "ws-handshake-1"}) as ws:
        assert ws.response is not None and ws.response.headers["x-request-id"] == "ws-handshake-1"
        ws.recv(timeout=30)
    row = one_row(stack, "ws-handshake-1")
    assert (row["family"], row["route"], row["method"], row["status"], row["tenant"]) == ("jobs", "/v1/jobs/{job_id}/ws", "GET", "101", "tests")


@pytest.mark.parametrize("through", ["nginx", "api"])
def test_a_sane_client_id_is_echoed_and_a_hostile_one_replaced(stack: Stack, auth: dict[str, str], through: str) -> None:
    with httpx.Client(base_url=stack.ingress if through == "nginx" else api_url(stack), timeout=30, headers=auth) as c:
        assert c.get("/v1/models", headers={"X-Request-Id": "client.id:42_ok-1"}).headers["x-request-id"] == "client.id:42_ok-1"
        for hostile in ("x" * 129, "two words", "quote\"d", "semi;colon"):
            rid = c.get("/v1/models", headers={"X-Request-Id": hostile}).headers["x-request-id"]
            assert rid != hostile and len(rid) == 32
        assert c.get("/v1/models", headers={"X-Request-Id": "", "Authorization": "Bearer nope"}).status_code == 401


# ---------------------------------------------------------------- carried to the engine


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Forwards to the real engine and records each request's path and X-Request-Id."""

    upstream = ""
    seen: list[tuple[str, str | None]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def _forward(self) -> None:
        self.seen.append((self.path, self.headers.get("X-Request-Id")))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command == "POST" else None
        req = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                     headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")})
        with urllib.request.urlopen(req, timeout=120) as up:
            self.send_response(up.status)
            for k, v in up.headers.items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            while chunk := up.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()

    do_GET = do_POST = _forward


def _reloads(stack: Stack, name: str) -> int:
    log = stack.cfg.state_dir / "logs" / f"{name}.log"
    return log.read_text().count('"catalog reload') if log.exists() else 0


def _reload(stack: Stack, overlay: Path, models: list[dict[str, Any]]) -> None:
    overlay.write_text(yaml.safe_dump({"models": models}))
    before = {n: _reloads(stack, n) for n in CATALOG_READERS}
    stack.reload_catalog()
    eventually(lambda: all(_reloads(stack, n) > before[n] for n in CATALOG_READERS), "every process to reload the catalog")


@pytest.fixture
def proxied_model(stack: Stack) -> Iterator[type[_Recorder]]:
    recorder = type("Recorder", (_Recorder,), {"upstream": f"http://127.0.0.1:{stack.cfg.engine_port}", "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    overlay = next(p for p in stack.cfg.catalog_overlays if p.name == RELOAD_OVERLAY)
    _reload(stack, overlay, [{"name": PROXIED_MODEL, "domain": "llm", "kind": "chat", "context_length": 2048,
                              "endpoints": [{"engine": "llamacpp", "url": f"http://127.0.0.1:{server.server_port}", "engine_model": LLM_MODEL}]}])
    try:
        yield recorder
    finally:
        _reload(stack, overlay, [])
        server.shutdown()


def test_the_request_id_travels_api_temporal_worker_engine(stack: Stack, auth: dict[str, str], proxied_model: type[_Recorder]) -> None:
    rid = f"engine-check-{uuid.uuid4().hex[:8]}"
    client = JobClient(api_url(stack), timeout=60)
    r = client.http.post("/v1/jobs", json={**llm_job(max_tokens=3), "model": PROXIED_MODEL}, headers={**auth, "X-Request-Id": rid})
    assert r.status_code == 202 and r.headers["x-request-id"] == rid
    job_id = r.json()["id"]
    eventually(lambda: client.http.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "succeeded", "the job to succeed", timeout_s=60)
    generations = [(path, seen) for path, seen in proxied_model.seen if path.endswith("/completions")]
    assert generations and all(seen == rid for _, seen in generations), proxied_model.seen
    view = client.http.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert view["request_id"] == rid


# ---------------------------------------------------------------- the log line and the row


def test_a_completion_has_one_log_line_and_one_row_without_its_text(stack: Stack, auth: dict[str, str]) -> None:
    rid = f"completion-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=api_url(stack), timeout=120) as c:
        started = time.perf_counter()
        r = c.post("/v1/chat/completions", json=chat(6, top_p=0.9), headers={**auth, "X-Request-Id": rid})
        total_ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    overhead = float(r.headers["x-switchyard-overhead-ms"])
    assert 0 <= overhead <= total_ms
    row = one_row(stack, rid)
    assert (row["family"], row["route"], row["method"], row["status"], row["tenant"], row["model"], row["outcome"]) == \
        ("openai", "/v1/chat/completions", "POST", "200", "tests", LLM_MODEL, "succeeded")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert {k: row["params"].get(k) for k in ("max_tokens", "temperature", "top_p", "n", "stream", "seed")} == \
        {"max_tokens": 6, "temperature": 0, "top_p": 0.9, "n": 1, "stream": False, "seed": 3}
    assert row["endpoint"] == "llamacpp-0" and row["attempts"] == 1 and row["job_id"] is not None and row["key_id"] is not None
    assert row["ttft_ms"] > 0 and row["engine_ms"] > 0 and row["queue_ms"] >= 0 and row["overhead_ms"] == pytest.approx(overhead, abs=0.01)
    assert row["engine_ms"] + row["overhead_ms"] == pytest.approx(row["total_ms"], rel=0.05, abs=2)
    assert SECRET not in row["everything"]
    eventually(lambda: len(api_log_lines(stack, rid)) == 1, "the request's log line", timeout_s=10)
    line = api_log_lines(stack, rid)[0]
    assert line["logger"] == "switchyard.requests" and line["status"] == "200" and line["completion_tokens"] == usage["completion_tokens"]
    assert line["params"]["max_tokens"] == 6 and line["job_id"] == str(row["job_id"]) and line["key_id"] == str(row["key_id"])
    assert not any(SECRET in x for x in raw_log_lines(stack, rid))


def test_a_job_has_one_row_completed_when_it_ends_and_get_job_shows_the_same(stack: Stack, auth: dict[str, str]) -> None:
    rid = f"job-{uuid.uuid4().hex[:8]}"
    client = JobClient(api_url(stack), timeout=60)
    body = {**llm_job(f"Describe {SECRET}.", max_tokens=5), "priority": "high"}
    r = client.http.post("/v1/jobs", json=body, headers={**auth, "X-Request-Id": rid, "Idempotency-Key": rid})
    job_id = r.json()["id"]
    replay = client.http.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": rid})
    assert replay.headers["idempotent-replayed"] == "true"
    eventually(lambda: client.http.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "succeeded", "the job to succeed", timeout_s=60)
    view = client.http.get(f"/v1/jobs/{job_id}", headers=auth).json()
    eventually(lambda: rows(stack, "job_id = :j", j=job_id)[:1] != [] and rows(stack, "job_id = :j", j=job_id)[0]["outcome"] == "succeeded",
               "the job's row completed", timeout_s=10)
    owned = rows(stack, "job_id = :j", j=job_id)
    assert len(owned) == 1  # the replay's request has its own row, without the job
    row = owned[0]
    assert (row["request_id"], row["family"], row["route"], row["status"], row["priority"]) == (rid, "jobs", "/v1/jobs", "202", view["priority"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (view["usage"]["prompt_tokens"], view["usage"]["completion_tokens"])
    t = view["timings"]
    assert (row["queue_ms"], row["ttft_ms"], row["total_ms"], row["engine_ms"]) == (t["queue_ms"], t["ttft_ms"], t["total_ms"], t["engine_ms"])
    assert t["engine_ms"] > 0 and t["overhead_ms"] == pytest.approx(t["total_ms"] - t["engine_ms"])
    assert row["attempts"] == view["attempts"] == 1 and row["endpoint"] == "llamacpp-0" and view["request_id"] == rid
    assert row["params"]["max_tokens"] == 5 and SECRET not in row["everything"]
    replayed = one_row(stack, replay.headers["x-request-id"])
    assert (replayed["outcome"], replayed["job_id"]) == ("replayed", None)


def test_a_stream_the_client_cut_off_still_accounts_the_tokens_it_was_sent(stack: Stack, auth: dict[str, str]) -> None:
    rid = f"cut-{uuid.uuid4().hex[:8]}"
    received = 0
    with httpx.Client(base_url=api_url(stack), timeout=120) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat(400, stream=True, ignore_eos=True), headers={**auth, "X-Request-Id": rid}) as s:
            assert s.headers["x-request-id"] == rid
            for line in s.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    received += 1
                    if received == 5:
                        break
    row = one_row(stack, rid)
    assert row["outcome"] == "client_closed" and row["status"] == "200"
    assert received <= row["completion_tokens"] < 400  # what was relayed, not what was asked
    assert row["ttft_ms"] > 0 and row["params"]["stream"] is True


def test_v2_rest_infer_answers_its_overhead_and_records_the_images(stack: Stack, auth: dict[str, str], image: bytes) -> None:
    rid = f"v2-{uuid.uuid4().hex[:8]}"
    body, headers = v2_infer_body([image, image])
    with httpx.Client(base_url=api_url(stack), timeout=60) as c:
        started = time.perf_counter()
        r = c.post("/v2/models/vision-classify/infer", content=body, headers={**auth, **headers, "X-Request-Id": rid})
        total_ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    assert 0 <= float(r.headers["x-switchyard-overhead-ms"]) <= total_ms
    row = one_row(stack, rid)
    assert (row["family"], row["route"], row["model"], row["items"], row["tenant"]) == ("v2_rest", "/v2/models/{model}/infer", "vision-classify", 2, "tests")
    assert row["engine_ms"] > 0 and 0 <= row["overhead_ms"] <= row["total_ms"]


# ---------------------------------------------------------------- usage


def test_usage_sums_a_tenants_requests_per_model_and_only_its_own(stack: Stack, auth: dict[str, str]) -> None:
    tenant = f"usage-{uuid.uuid4().hex[:6]}"
    key = stack.create_key(tenant, ("openai", "jobs"), "normal", "usage test")
    mine = {"Authorization": f"Bearer {key}"}
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    sent = []
    with httpx.Client(base_url=stack.ingress, timeout=120) as c:
        for n in (3, 4):
            r = c.post("/v1/chat/completions", json=chat(n), headers=mine)
            assert r.status_code == 200, r.text
            sent.append(r.json()["usage"])
        want = {"tenant": tenant, "model": LLM_MODEL, "requests": 2, "prompt_tokens": sum(u["prompt_tokens"] for u in sent),
                "completion_tokens": sum(u["completion_tokens"] for u in sent), "items": 0}
        want["total_tokens"] = want["prompt_tokens"] + want["completion_tokens"]
        images = [base64.b64encode(i).decode() for i in sample_images().values()][:2]
        vision = c.post("/v1/jobs", json={"domain": "vision", "model": "vision-classify", "input": {"images": images}}, headers=mine)
        assert vision.status_code == 202, vision.text
        eventually(lambda: c.get(f"/v1/jobs/{vision.json()['id']}", headers=mine).json()["status"] == "succeeded", "the vision job", timeout_s=60)
        timings = c.get(f"/v1/jobs/{vision.json()['id']}", headers=mine).json()["timings"]
        assert 0 < timings["engine_ms"] <= timings["total_ms"] and timings["overhead_ms"] >= 0, timings  # the data plane's time
        images_used = {"tenant": tenant, "model": "vision-classify", "requests": 1, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                       "items": 2}

        def report(headers: dict[str, str], **params: str) -> httpx.Response:
            return c.get("/v1/usage", params={"start": start.isoformat(), **params}, headers=headers)

        eventually(lambda: report(mine).json()["data"] == [want, images_used], "the tenant's usage", timeout_s=10)
        assert report(mine, model=LLM_MODEL).json()["data"] == [want] and report(mine, model="other").json()["data"] == []
        assert all(row["tenant"] == "tests" for row in report(auth).json()["data"])  # another tenant's key sees its own only
        assert report(auth, tenant=tenant).status_code == 403
        admin = {"Authorization": f"Bearer {stack.create_key('ops', ('admin',), 'normal', 'usage admin')}"}
        assert report(admin, tenant=tenant).json()["data"] == [want, images_used]
        assert c.get("/v1/usage").status_code == 401
        bad = report(mine, end=(start - dt.timedelta(hours=1)).isoformat())
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_window"
        assert report(mine, start="yesterday").status_code == 422 and "error" in report(mine, start="yesterday").json()
        assert report(mine, start=(start - dt.timedelta(days=400)).isoformat()).status_code == 422
        assert report(mine, end="0001-01-01T00:01:00-00:03").status_code == 422  # beyond datetime's range once in UTC (was a 500)

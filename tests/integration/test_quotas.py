"""Per-key quotas, the per-model backlog and Nginx's per-address limit, against the running stack.

Keys are created with tiny limits (``Stack.create_key(rps=..., max_streams=..., tpm=...)``); each
test shows the limit taking hold (429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers,
in each route family's error shape: /v1 ApiError ``rate_limit_exceeded``, V2 ``{"error": ...}``,
gRPC ``RESOURCE_EXHAUSTED``, WebSocket close 4429) and then the recovery.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import redis
import tritonclient.grpc as grpcclient
from conftest import FALLBACK_MODEL, MAX_PENDING, eventually  # pants: no-infer-dep
from sqlalchemy.engine import make_url
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from switchyard.devstack.client import llm_job
from switchyard.devstack.procs import Proc, free_port, http_ready
from switchyard.devstack.stack import LLM_MODEL, Stack, StackConfig, find_nginx, render_nginx

V2_MODEL = "vision-classify"
MSG = [{"role": "user", "content": "Say hi."}]
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")
TERMINAL = ("succeeded", "failed", "cancelled")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def tenant() -> str:
    return f"quota-{uuid.uuid4().hex[:8]}"


def assert_429(r: httpx.Response, limit: str) -> dict[str, Any]:
    """A /v1 over-the-limit answer: the ApiError shape, Retry-After and the limit's headers."""
    assert r.status_code == 429, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error" and limit in err["message"], err
    assert int(r.headers["retry-after"]) >= 1
    kind = "tokens" if limit == "tokens" else "requests"
    if limit != "streams":
        # Requests: none left. Tokens: fewer left than the request needs (perhaps some).
        remaining, limit_value = int(r.headers[f"x-ratelimit-remaining-{kind}"]), int(r.headers[f"x-ratelimit-limit-{kind}"])
        assert (remaining == 0 if kind == "requests" else remaining < limit_value) and limit_value >= 1, dict(r.headers)
        assert RESET.match(r.headers[f"x-ratelimit-reset-{kind}"]), dict(r.headers)
    return err  # type: ignore[no-any-return]


def wait_done(http: httpx.Client, job_id: str, timeout_s: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(f"/v1/jobs/{job_id}")
        if r.status_code != 429:  # a key with a tiny request rate may be over it
            job = r.json()
            if job["status"] in TERMINAL:
                return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"job {job_id} still {r.text[:200]}"
        time.sleep(1.1)


def ws_answer(stack: Stack, job_id: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """(close code, the error message) of a refused WebSocket; (1000, first message) if it streams."""
    url = stack.ingress.replace("http://", "ws://") + f"/v1/jobs/{job_id}/ws"
    try:
        with ws_connect(url, open_timeout=10, additional_headers=headers) as ws:
            first = json.loads(ws.recv(timeout=30))
            if first.get("event") != "error":
                return 1000, first
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                assert e.rcvd is not None
                return e.rcvd.code, first
            raise AssertionError("the WebSocket stayed open after its error")
    except InvalidStatus as e:
        raise AssertionError(f"handshake refused with HTTP {e.response.status_code}") from e


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.ingress, headers=bearer(stack.dev_key), timeout=60) as c:
        yield c


# ---------------------------------------------------------------- requests per second


def test_requests_per_second_on_v1_then_recovered(stack: Stack) -> None:
    key = stack.create_key(tenant(), rps=1)  # a burst of 1, one more each second
    with httpx.Client(base_url=stack.ingress, headers=bearer(key), timeout=30) as c:
        ok = c.get("/v1/jobs")
        assert ok.status_code == 200
        # Successful answers carry the request headers too.
        assert ok.headers["x-ratelimit-limit-requests"] == "1" and ok.headers["x-ratelimit-remaining-requests"] == "0"
        for path in ("/v1/jobs", "/v1/models", "/v1/chat/completions"):  # jobs and OpenAI routes share the key's budget
            r = c.post(path, json={"model": LLM_MODEL, "messages": MSG}) if path.endswith("completions") else c.get(path)
            assert_429(r, "requests")
        time.sleep(1.1)
        assert c.get("/v1/models").status_code == 200  # recovered


def test_requests_per_second_with_the_openai_client(stack: Stack) -> None:
    oai = openai.OpenAI(base_url=stack.ingress + "/v1", api_key=stack.create_key(tenant(), rps=1), max_retries=0, timeout=60)
    assert oai.models.list().data
    with pytest.raises(openai.RateLimitError) as e:
        oai.models.list()
    assert e.value.body["code"] == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) >= 1  # type: ignore[index]
    time.sleep(1.1)
    assert oai.models.list().data


def test_requests_per_second_on_v2_rest_and_the_infer_fast_path(stack: Stack) -> None:
    key = stack.create_key(tenant(), rps=1)
    infer = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    with httpx.Client(base_url=stack.ingress, headers=bearer(key), timeout=30) as c:
        assert c.get("/v2").status_code == 200
        for r in (c.get("/v2"), c.post(f"/v2/models/{V2_MODEL}/infer", content=infer)):
            assert r.status_code == 429 and "requests per second" in r.json()["error"], r.text  # V2's shape: {"error": "..."}
            assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining-requests"] == "0"
        time.sleep(1.1)
        r = c.post(f"/v2/models/{V2_MODEL}/infer", content=infer)
        assert r.status_code == 400 and "could not be decoded" in r.json()["error"], r.text  # past the limit: the worker judged the image


def test_requests_per_second_on_grpc(stack: Stack) -> None:
    key = stack.create_key(tenant(), rps=1)
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{stack.cfg.grpc_port}")
    headers = {"authorization": f"Bearer {key}"}
    try:
        assert client.get_server_metadata(headers=headers).name
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata(V2_MODEL, headers=headers)
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "requests per second" in (e.value.message() or "")
        # The raw stub sees the Retry-After trailer.
        time.sleep(1.1)
        with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=tuple(headers.items()), timeout=30)
            with pytest.raises(grpc.RpcError) as raw:
                stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=tuple(headers.items()), timeout=30)
            assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(dict(raw.value.trailing_metadata())["retry-after"]) >= 1
        time.sleep(1.1)
        assert client.get_model_metadata(V2_MODEL, headers=headers).name == V2_MODEL  # recovered
    finally:
        client.close()


def test_requests_per_second_on_the_websocket_handshake(stack: Stack) -> None:
    key = stack.create_key(tenant(), rps=1)
    with httpx.Client(base_url=stack.ingress, headers=bearer(key), timeout=30) as c:
        job_id = c.post("/v1/jobs", json=llm_job(max_tokens=1)).json()["id"]  # takes the one request
        code, message = ws_answer(stack, job_id, bearer(key))
        assert code == 4429 and message["data"]["error"]["code"] == "rate_limit_exceeded", message
        time.sleep(1.1)
        code, message = ws_answer(stack, job_id, bearer(key))
        assert code == 1000 and message.get("event") == "status", message
        time.sleep(1.1)
        wait_done(c, job_id)


# ---------------------------------------------------------------- concurrent streams


def test_concurrent_streams_are_capped_and_a_closed_stream_frees_its_slot(stack: Stack) -> None:
    key = stack.create_key(tenant(), max_streams=1)
    with httpx.Client(base_url=stack.ingress, headers=bearer(key), timeout=httpx.Timeout(60, connect=5)) as c:
        # A job that runs long enough to keep its streams open (cancelled at the end).
        job_id = c.post("/v1/jobs", json=llm_job(max_tokens=1500, ignore_eos=True)).json()["id"]
        try:
            with c.stream("GET", f"/v1/jobs/{job_id}/events") as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped iterator closes the connection
                assert next(lines).startswith("id:")  # the stream is open
                assert_429(c.get(f"/v1/jobs/{job_id}/events"), "streams")
                code, message = ws_answer(stack, job_id, bearer(key))
                assert code == 4429 and "streams" in message["data"]["error"]["message"], message
                streamed = c.post("/v1/chat/completions", json={"model": LLM_MODEL, "messages": MSG, "max_tokens": 2, "stream": True})
                assert_429(streamed, "streams")
            # The first stream is closed: its slot is free again (released in the background).

            def reopened() -> bool:
                with c.stream("GET", f"/v1/jobs/{job_id}/events") as again:
                    return again.status_code == 200

            eventually(reopened, "the closed stream's slot to be free")
        finally:
            c.delete(f"/v1/jobs/{job_id}")
            wait_done(c, job_id)


# ---------------------------------------------------------------- tokens per minute


def test_tokens_per_minute_reserved_at_admission_and_settled_at_the_end(stack: Stack) -> None:
    key, other = stack.create_key(tenant(), tpm=3000), stack.create_key(tenant(), tpm=3000)  # refill: 50 tokens/s
    big = {"model": LLM_MODEL, "messages": MSG, "max_tokens": 2500}
    with httpx.Client(base_url=stack.ingress, headers=bearer(key), timeout=180) as c:
        # A job's reservation: prompt estimate + max_tokens.
        first = c.post("/v1/jobs", json=llm_job("Say hi.", max_tokens=2500))
        assert first.status_code == 202, first.text
        t0, before = time.monotonic(), int(first.headers["x-ratelimit-remaining-tokens"])
        assert before < 500 and first.headers["x-ratelimit-limit-tokens"] == "3000"
        # The next one does not fit: on the job API, the OpenAI routes (raw and through the official client).
        assert_429(c.post("/v1/jobs", json=llm_job(max_tokens=2500)), "tokens")
        assert_429(c.post("/v1/chat/completions", json=big), "tokens")
        oai = openai.OpenAI(base_url=stack.ingress + "/v1", api_key=key, max_retries=0, timeout=60)
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(**big)
        assert "tokens per minute" in e.value.body["message"]  # type: ignore[index]
        # Another key is not affected.
        with httpx.Client(base_url=stack.ingress, headers=bearer(other), timeout=180) as o:
            assert o.post("/v1/chat/completions", json={**big, "max_tokens": 2}).status_code == 200
        # The first job ends with a short answer: its unused reservation comes back.
        done = wait_done(c, first.json()["id"])
        assert done["status"] == "succeeded" and done["usage"]["total_tokens"] < 500, done
        after = c.post("/v1/jobs", json=llm_job(max_tokens=1))
        assert after.status_code == 202
        refilled = 50 * (time.monotonic() - t0)
        remaining = int(after.headers["x-ratelimit-remaining-tokens"])
        # Without the settlement only the refill would have come back (and the tiny job taken ~20).
        assert remaining > min(before + refilled + 1000, 2500), (before, refilled, remaining)
        wait_done(c, after.json()["id"])


def test_a_request_larger_than_the_whole_budget_is_refused(stack: Stack) -> None:
    with httpx.Client(base_url=stack.ingress, headers=bearer(stack.create_key(tenant(), tpm=100)), timeout=60) as c:
        err = assert_429(c.post("/v1/chat/completions", json={"model": LLM_MODEL, "messages": MSG, "max_tokens": 200}), "tokens")
        assert "too large" in err["message"]
        assert c.post("/v1/embeddings", json={"model": "smollm2-135m-embed", "input": "a cat"}).status_code == 200  # a few tokens fit
        assert_429(c.post("/v1/embeddings", json={"model": "smollm2-135m-embed", "input": "word " * 200}), "tokens")


# ---------------------------------------------------------------- backlog


def _backlog_size(stack: Stack, model: str) -> int:
    r = redis.Redis.from_url(stack.cfg.redis_url)
    try:
        return int(r.zcard(f"switchyard:backlog:{make_url(stack.cfg.postgres_dsn).database}:{model}"))
    finally:
        r.close()


def test_concurrent_submissions_fill_the_backlog_exactly(stack: Stack, auth: dict[str, str]) -> None:
    """50 submissions at once for a model whose backlog holds MAX_PENDING: exactly that many are
    accepted (the former count-then-insert in PostgreSQL let more through)."""
    eventually(lambda: _backlog_size(stack, FALLBACK_MODEL) == 0, "an empty backlog", 60)
    worker = stack.procs["worker-llm"].popen
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)  # nothing drains the backlog meanwhile
    accepted: list[str] = []
    try:
        body = {**llm_job(max_tokens=1), "model": FALLBACK_MODEL}
        with httpx.Client(base_url=stack.ingress, headers=auth, timeout=60, limits=httpx.Limits(max_connections=50)) as c:
            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(lambda _: c.post("/v1/jobs", json=body), range(50)))
            accepted = [r.json()["id"] for r in answers if r.status_code == 202]
            refused = [r for r in answers if r.status_code != 202]
            assert len(accepted) == MAX_PENDING, [r.status_code for r in answers]
            assert all(r.status_code == 429 and r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1" for r in refused)
            assert _backlog_size(stack, FALLBACK_MODEL) == MAX_PENDING
            for job_id in accepted:
                c.delete(f"/v1/jobs/{job_id}")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # Ended jobs give their places back.
    eventually(lambda: _backlog_size(stack, FALLBACK_MODEL) == 0, "the backlog to drain", 120)
    with httpx.Client(base_url=stack.ingress, headers=auth, timeout=60) as c:
        r = c.post("/v1/jobs", json={**llm_job(max_tokens=1), "model": FALLBACK_MODEL})
        assert r.status_code == 202
        wait_done(c, r.json()["id"])


def test_reconcile_drops_a_lost_removal(stack: Stack) -> None:
    """A backlog id whose removal was lost (here: written by hand, of a job that does not exist) is
    dropped by the API's periodic reconcile, so it cannot hold a place for ever."""
    r = redis.Redis.from_url(stack.cfg.redis_url)
    key = f"switchyard:backlog:{make_url(stack.cfg.postgres_dsn).database}:{FALLBACK_MODEL}"
    ghost = str(uuid.uuid4())
    try:
        r.zadd(key, {ghost: time.time() - 3600})  # accepted an hour ago, never removed
        eventually(lambda: r.zscore(key, ghost) is None, "the reconcile to drop the lost id", 40)
    finally:
        r.zrem(key, ghost)
        r.close()


# ---------------------------------------------------------------- admin and CLI


def test_admin_routes_set_and_list_a_key_s_limits(stack: Stack, admin: httpx.Client) -> None:
    made = admin.post("/v1/admin/keys", json={"tenant": tenant(), "scopes": ["jobs"], "rps": 1, "max_streams": 2, "tpm": 5000})
    assert made.status_code == 201, made.text
    assert (made.json()["rps"], made.json()["max_streams"], made.json()["tpm"]) == (1, 2, 5000)
    listed = {k["id"]: k for k in admin.get("/v1/admin/keys", params={"tenant": made.json()["tenant"]}).json()["data"]}
    assert (listed[made.json()["id"]]["rps"], listed[made.json()["id"]]["tpm"]) == (1, 5000)
    with httpx.Client(base_url=stack.ingress, headers=bearer(made.json()["key"]), timeout=30) as c:
        assert c.get("/v1/jobs").status_code == 200
        assert_429(c.get("/v1/jobs"), "requests")
    bad = admin.post("/v1/admin/keys", json={"tenant": tenant(), "rps": 0})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "rps", bad.text
    # Keys without their own limits list null (their tier's apply).
    plain = admin.post("/v1/admin/keys", json={"tenant": tenant()}).json()
    assert (plain["rps"], plain["max_streams"], plain["tpm"]) == (None, None, None)


# ---------------------------------------------------------------- Nginx per-address limit


@pytest.fixture
def strict_ingress(stack: Stack) -> Iterator[StackConfig]:
    """A second Nginx in front of the same API, rendered with a low per-address limit (2/s, burst 3)."""
    state = Path(tempfile.mkdtemp(prefix="switchyard-nginx-"))
    cfg = StackConfig(state_dir=state, http_port=free_port(), grpc_port=free_port(), api_port=stack.cfg.api_port, api_grpc_port=stack.cfg.api_grpc_port,
                      ingress_rate_rps=2, ingress_burst=3)
    proc = Proc("nginx-strict", [find_nginx(), "-c", str(render_nginx(cfg)), "-p", str(state / "nginx"), "-e", str(state / "error.log")],
                dict(os.environ), state / "nginx.log", http_ready(f"http://127.0.0.1:{cfg.http_port}/healthz"))
    proc.start()
    try:
        proc.wait_ready()
        time.sleep(2.0)  # the readiness probes' share of the budget refills
        yield cfg
    finally:
        proc.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_nginx_limits_requests_per_address_then_recovers(strict_ingress: StackConfig, api_key: str) -> None:
    base = f"http://127.0.0.1:{strict_ingress.http_port}"
    with httpx.Client(base_url=base, headers=bearer(api_key), timeout=30) as c:
        answers = [c.get("/v1/models") for _ in range(12)]
        codes = [r.status_code for r in answers]
        assert codes.count(200) >= 3 and codes.count(429) >= 5, codes  # the burst, then refused
        limited = next(r for r in answers if r.status_code == 429)
        assert limited.headers["retry-after"] == "1" and limited.json()["error"]["code"] == "rate_limit_exceeded"
        v2 = [c.get("/v2") for _ in range(8)]
        refused = [r for r in v2 if r.status_code == 429]
        assert refused and "too many requests" in refused[0].json()["error"]  # V2's shape on /v2
        time.sleep(2.0)
        assert c.get("/v1/models").status_code == 200  # recovered
    # gRPC through the same Nginx: RESOURCE_EXHAUSTED once over.
    with grpc.insecure_channel(f"127.0.0.1:{strict_ingress.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        codes_grpc = []
        for _ in range(10):
            try:
                stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
                codes_grpc.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes_grpc.append(e.code())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes_grpc and grpc.StatusCode.OK in codes_grpc, codes_grpc

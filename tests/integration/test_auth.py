"""API keys, scopes and tenants against the running stack, through the ingress (HTTP and gRPC).

Every route family refuses a request without a valid key (401) or with a key that lacks its scope
(403), each in its own error shape (ApiError JSON on /v1, ``{"error": ...}`` on /v2, gRPC status
codes); health and documentation stay open. Admin keys manage keys. A tenant never sees another
tenant's jobs through any route, idempotency keys are per tenant, and a key's tier caps the
priority its requests get. No error body ever contains the key that was sent.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from conftest import eventually  # pants: no-infer-dep
from tritonclient.grpc import service_pb2, service_pb2_grpc
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from switchyard.common.keys import POSITIVE_TTL_S, generate
from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import python_env
from switchyard.devstack.stack import EMBED_MODEL, LLM_MODEL, Stack

V2_MODEL = "vision-classify"
MSG = [{"role": "user", "content": "Say hi."}]
V2_INFER = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode()
SOME_ID = str(uuid.uuid4())
TERMINAL = ("succeeded", "failed", "cancelled")

# (method, path, JSON body or raw bytes): a request each family would serve (or refuse for its
# content) given a key, so that the key is the only thing wrong with it.
JOBS_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/jobs", None),
    ("POST", "/v1/jobs", llm_job(max_tokens=1)),
    ("GET", f"/v1/jobs/{SOME_ID}", None),
    ("GET", f"/v1/jobs/{SOME_ID}/events", None),
    ("DELETE", f"/v1/jobs/{SOME_ID}", None),
]
OPENAI_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{LLM_MODEL}", None),
    ("POST", "/v1/chat/completions", {"model": LLM_MODEL, "messages": MSG, "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": LLM_MODEL, "prompt": "Hi", "max_tokens": 1}),
    ("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": "a cat"}),
]
ADMIN_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/admin/keys", None),
    ("POST", "/v1/admin/keys", {"tenant": "never-made", "scopes": ["jobs"], "tier": "normal", "name": "refused"}),
    ("DELETE", f"/v1/admin/keys/{SOME_ID}", None),
]
V2_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v2", None),
    ("POST", "/v2/repository/index", b"{}"),
    ("GET", "/v2/models/stats", None),
    *[("GET", f"/v2/models/{V2_MODEL}{base}{tail}", None) for base in ("", "/versions/1") for tail in ("", "/ready", "/config", "/stats")],
    ("POST", f"/v2/models/{V2_MODEL}/infer", V2_INFER),  # the V2 fast path (middleware, not a FastAPI route)
    ("POST", f"/v2/models/{V2_MODEL}/versions/1/infer", V2_INFER),
]
# The recsys routes belong to the realtime lane (scope v2) but answer in the platform's error shape.
RECSYS_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/recommendations", {"user_id": 1}),
    ("POST", "/v1/recsys/events", {"user_id": 1, "item_id": 1}),
]
V1_ROUTES = JOBS_ROUTES + OPENAI_ROUTES + ADMIN_ROUTES + RECSYS_ROUTES
OPEN_PATHS = ["/healthz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json"]

GRPC_OPEN = ["ServerLive", "ServerReady"]
GRPC_GUARDED = ["ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics", "RepositoryIndex", "ModelInfer"]

# How a request can fail to present a valid key (the revoked one is made by the ``revoked_key`` fixture).
BAD_CREDENTIALS = ["none", "malformed", "not-bearer", "unknown", "unknown-x-api-key", "revoked"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def grpc_metadata(headers: dict[str, str]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers.items()]


def send(stack: Stack, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    return httpx.request(method, stack.ingress + path, headers=headers or {}, timeout=60, **kw)


def assert_no_key_in(text: str, headers: dict[str, str]) -> None:
    """No credential that was sent comes back (a sent Authorization value is checked without its scheme too)."""
    for value in headers.values():
        secret = value.split(" ", 1)[-1]
        assert secret not in text, "the answer echoes the key"


def assert_api_error(r: httpx.Response, status: int, code: str, headers: dict[str, str]) -> None:
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"], r.text
    if status == 401:
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), dict(r.headers)
    assert_no_key_in(r.text, headers)


def assert_v2_error(r: httpx.Response, status: int, headers: dict[str, str]) -> None:
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], r.text
    assert_no_key_in(r.text, headers)


# Another process refuses a revoked key once its cached answer expires.
REVOKED_WITHIN_S = POSITIVE_TTL_S + 3


def wait_done(http: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.2)


# ---------------------------------------------------------------- keys and clients


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    """The development key: every scope, admin included."""
    with httpx.Client(base_url=stack.ingress, headers=bearer(stack.dev_key), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def revoked_key(stack: Stack, admin: httpx.Client) -> str:
    """A key that worked, then was revoked through the admin API (and is refused everywhere since)."""
    r = admin.post("/v1/admin/keys", json={"tenant": f"revoked-{uuid.uuid4().hex[:6]}", "scopes": ["jobs", "openai", "v2"], "tier": "normal", "name": "to revoke"})
    assert r.status_code == 201, r.text
    key, key_id = r.json()["key"], r.json()["id"]
    assert send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 200
    assert admin.delete(f"/v1/admin/keys/{key_id}").status_code == 200
    eventually(lambda: send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 401, "the revoked key to be refused", REVOKED_WITHIN_S)
    return str(key)


@pytest.fixture(scope="module")
def bad_credentials(revoked_key: str) -> dict[str, dict[str, str]]:
    return {
        "none": {},
        "malformed": bearer("sk-sy-not-a-real-key"),
        "not-bearer": {"Authorization": "Basic " + base64.b64encode(b"user:" + generate().encode()).decode()},
        "unknown": bearer(generate()),
        "unknown-x-api-key": {"X-Api-Key": generate()},
        "revoked": bearer(revoked_key),
    }


@pytest.fixture(scope="module")
def tenants(stack: Stack) -> tuple[str, str]:
    """Keys of two tenants (jobs, openai, v2 scopes; normal tier)."""
    run = uuid.uuid4().hex[:6]
    return stack.create_key(f"alpha-{run}"), stack.create_key(f"beta-{run}")


@pytest.fixture(scope="module")
def grpc_stub(stack: Stack) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{stack.cfg.grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_request(method: str) -> Any:
    """A valid request of each gRPC method (the key being the only thing that can be wrong)."""
    if method == "ModelInfer":
        request = service_pb2.ModelInferRequest(model_name=V2_MODEL, model_version="")
        request.inputs.add(name="image", datatype="BYTES", shape=[1])
        image = sample_images()["china"]
        request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
        return request
    if method in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"):
        return getattr(service_pb2, f"{method}Request")(name=V2_MODEL, version="")
    return getattr(service_pb2, f"{method}Request")()


def grpc_call(stub: service_pb2_grpc.GRPCInferenceServiceStub, method: str, headers: dict[str, str]) -> grpc.StatusCode:
    try:
        getattr(stub, method)(grpc_request(method), metadata=grpc_metadata(headers), timeout=60)
    except grpc.RpcError as e:
        assert_no_key_in(e.details() or "", headers)
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def ws_answer(stack: Stack, job_id: str, headers: dict[str, str]) -> tuple[int, str]:
    """How the job's WebSocket answers: (HTTP status of a refused handshake, its body), or (close code
    - 4000, the error message sent before closing); (200, "") if it streams events."""
    url = stack.ingress.replace("http://", "ws://") + f"/v1/jobs/{job_id}/ws"
    try:
        with ws_connect(url, open_timeout=10, additional_headers=headers) as ws:
            first = ws.recv(timeout=30)
            message = json.loads(first)
            if message.get("event") != "error":
                return 200, ""
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as e:
                assert e.rcvd is not None
                return e.rcvd.code - 4000, str(first)
            raise AssertionError("the WebSocket stayed open after its error")
    except InvalidStatus as e:
        return e.response.status_code, e.response.body.decode(errors="replace") if e.response.body else ""


# ---------------------------------------------------------------- no valid key: 401


@pytest.mark.parametrize("credential", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path", "body"), V1_ROUTES, ids=[f"{m} {p}" for m, p, _ in V1_ROUTES])
def test_v1_routes_refuse_requests_without_a_valid_key(stack: Stack, bad_credentials: dict[str, dict[str, str]], credential: str,
                                                       method: str, path: str, body: Any) -> None:
    headers = bad_credentials[credential]
    assert_api_error(send(stack, method, path, body, headers), 401, "invalid_api_key", headers)


@pytest.mark.parametrize("credential", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path", "body"), V2_ROUTES, ids=[f"{m} {p}" for m, p, _ in V2_ROUTES])
def test_v2_routes_refuse_requests_without_a_valid_key(stack: Stack, bad_credentials: dict[str, dict[str, str]], credential: str,
                                                       method: str, path: str, body: Any) -> None:
    headers = bad_credentials[credential]
    assert_v2_error(send(stack, method, path, body, headers), 401, headers)


@pytest.mark.parametrize("credential", BAD_CREDENTIALS)
def test_grpc_refuses_calls_without_a_valid_key(grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub, bad_credentials: dict[str, dict[str, str]],
                                                credential: str) -> None:
    headers = bad_credentials[credential]
    assert {m: grpc_call(grpc_stub, m, headers) for m in GRPC_GUARDED} == dict.fromkeys(GRPC_GUARDED, grpc.StatusCode.UNAUTHENTICATED)


def test_websocket_refuses_a_connection_without_a_valid_key(stack: Stack, bad_credentials: dict[str, dict[str, str]], tenants: tuple[str, str]) -> None:
    with httpx.Client(base_url=stack.ingress, headers=bearer(tenants[0]), timeout=60) as owner:
        job_id = owner.post("/v1/jobs", json=llm_job(max_tokens=2)).json()["id"]
        for credential, headers in bad_credentials.items():
            status, body = ws_answer(stack, job_id, headers)
            assert status == 401, (credential, status, body)
            assert_no_key_in(body, headers)
        wait_done(owner, job_id)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/chat/completions", "/v1/admin/keys"])
def test_the_key_is_checked_before_the_body(stack: Stack, api_key: str, path: str) -> None:
    """Without a key, a body that is not JSON is still a 401: a caller without a key learns nothing
    from validation. With a key the same body is the 400 it deserves."""
    garbage = b"{not json"
    assert_api_error(send(stack, "POST", path, garbage, {"Content-Type": "application/json"}), 401, "invalid_api_key", {})
    with_key = send(stack, "POST", path, garbage, {"Content-Type": "application/json", **bearer(api_key)})
    assert with_key.status_code in (400, 403), with_key.text[:200]  # 403: /v1/admin needs the admin scope first


def test_open_endpoints_answer_without_a_key(stack: Stack, grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    for path in OPEN_PATHS:
        r = httpx.get(stack.ingress + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    assert {m: grpc_call(grpc_stub, m, {}) for m in GRPC_OPEN} == dict.fromkeys(GRPC_OPEN, grpc.StatusCode.OK)


def test_a_valid_key_is_accepted_as_bearer_or_x_api_key_on_every_family(stack: Stack, api_key: str,
                                                                          grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    for headers in (bearer(api_key), {"X-Api-Key": api_key}):
        for method, path, body in [JOBS_ROUTES[0], OPENAI_ROUTES[0], V2_ROUTES[0], ("GET", f"/v2/models/{V2_MODEL}/ready", None)]:
            r = send(stack, method, path, body, headers)
            assert r.status_code == 200, (headers.keys(), path, r.status_code, r.text[:200])
        r = send(stack, "POST", f"/v2/models/{V2_MODEL}/infer", V2_INFER, headers)
        assert r.status_code == 400 and "could not be decoded" in r.json()["error"], r.text  # past the key: the worker judged the image
        assert {m: grpc_call(grpc_stub, m, headers) for m in GRPC_GUARDED} == dict.fromkeys(GRPC_GUARDED, grpc.StatusCode.OK)


# ---------------------------------------------------------------- a key without the route's scope: 403


@pytest.mark.parametrize("scope", ["jobs", "openai", "v2"])
def test_a_key_serves_only_its_scopes(stack: Stack, grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub, scope: str) -> None:
    headers = bearer(stack.create_key(f"scoped-{scope}-{uuid.uuid4().hex[:6]}", scopes=(scope,)))
    families = {"jobs": JOBS_ROUTES, "openai": OPENAI_ROUTES, "v2": V2_ROUTES}
    for family, routes in families.items():
        if family == scope:
            continue
        for method, path, body in routes:
            r = send(stack, method, path, body, headers)
            if family == "v2":
                assert_v2_error(r, 403, headers)
            else:
                assert_api_error(r, 403, "insufficient_scope", headers)
    for method, path, body in ADMIN_ROUTES + (RECSYS_ROUTES if scope != "v2" else []):
        assert_api_error(send(stack, method, path, body, headers), 403, "insufficient_scope", headers)
    grpc_codes = {m: grpc_call(grpc_stub, m, headers) for m in GRPC_GUARDED}
    assert grpc_codes == dict.fromkeys(GRPC_GUARDED, grpc.StatusCode.OK if scope == "v2" else grpc.StatusCode.PERMISSION_DENIED)
    # Its own family serves it.
    own = {"jobs": ("GET", "/v1/jobs", None), "openai": ("GET", "/v1/models", None), "v2": ("GET", "/v2", None)}[scope]
    assert send(stack, *own, headers=headers).status_code == 200


# ---------------------------------------------------------------- admin routes


def test_admin_creates_lists_and_revokes_keys(stack: Stack, admin: httpx.Client) -> None:
    tenant = f"made-{uuid.uuid4().hex[:6]}"
    r = admin.post("/v1/admin/keys", json={"tenant": tenant, "scopes": ["jobs", "v2"], "tier": "low", "name": "ci robot"})
    assert r.status_code == 201, r.text
    made = r.json()
    key = made["key"]
    assert re.fullmatch(r"sk-sy-[A-Za-z0-9_-]{43}", key), "not a key of the documented shape"
    assert (made["tenant"], made["scopes"], made["tier"], made["name"], made["prefix"]) == (tenant, ["jobs", "v2"], "low", "ci robot", key[:10])
    assert made["id"] and made["created_at"]
    assert send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 200
    assert send(stack, "GET", "/v1/models", headers=bearer(key)).status_code == 403  # not in its scopes

    # Listed (all tenants, or one), never with the secret or its hash.
    for params in ({}, {"tenant": tenant}):
        listing = admin.get("/v1/admin/keys", params=params)
        assert listing.status_code == 200, listing.text
        assert key not in listing.text and key[10:] not in listing.text
        assert not re.search(r"\b[0-9a-f]{64}\b", listing.text), "the listing shows a key hash"
        [row] = [k for k in listing.json()["data"] if k["id"] == made["id"]]
        assert (row["tenant"], row["prefix"], row["tier"], row["name"]) == (tenant, key[:10], "low", "ci robot")
        assert not {"key", "secret", "key_hash", "hash"} & set(row)
    assert {k["tenant"] for k in admin.get("/v1/admin/keys", params={"tenant": tenant}).json()["data"]} == {tenant}

    # Revoked: refused from then on (within the lookup cache's lifetime in other processes).
    revoked = admin.delete(f"/v1/admin/keys/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] and key not in revoked.text
    eventually(lambda: send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 401, "the revoked key to be refused", REVOKED_WITHIN_S)
    [row] = [k for k in admin.get("/v1/admin/keys", params={"tenant": tenant}).json()["data"] if k["id"] == made["id"]]
    assert row["revoked_at"]
    assert admin.delete(f"/v1/admin/keys/{uuid.uuid4()}").json()["error"]["code"] == "key_not_found"


@pytest.mark.parametrize("body", [
    {"tenant": "t", "scopes": ["jobs", "root"], "tier": "normal", "name": "x"},
    {"tenant": "t", "scopes": ["jobs"], "tier": "platinum", "name": "x"},
    {"tenant": "", "scopes": ["jobs"], "tier": "normal", "name": "x"},
    {"tenant": "t" * 65, "scopes": ["jobs"], "tier": "normal", "name": "x"},
    {"tenant": "t", "scopes": [], "tier": "normal", "name": "x"},
], ids=["unknown scope", "unknown tier", "empty tenant", "long tenant", "no scopes"])
def test_admin_refuses_bad_key_requests(admin: httpx.Client, body: dict[str, Any]) -> None:
    r = admin.post("/v1/admin/keys", json=body)
    assert r.status_code in (400, 422) and r.json()["error"]["code"], r.text


def test_non_admin_keys_cannot_manage_keys(stack: Stack, api_key: str, gold_key: str) -> None:
    for key in (api_key, gold_key):
        for method, path, body in ADMIN_ROUTES:
            assert_api_error(send(stack, method, path, body, bearer(key)), 403, "insufficient_scope", bearer(key))


# ---------------------------------------------------------------- tenants


def test_tenants_cannot_see_each_others_jobs(stack: Stack, admin: httpx.Client, tenants: tuple[str, str]) -> None:
    alpha_key, beta_key = tenants
    with httpx.Client(base_url=stack.ingress, headers=bearer(alpha_key), timeout=60) as alpha, \
            httpx.Client(base_url=stack.ingress, headers=bearer(beta_key), timeout=60) as beta:
        mine = alpha.post("/v1/jobs", json=llm_job(max_tokens=40, ignore_eos=True, metadata={"who": "alpha"}))
        theirs = beta.post("/v1/jobs", json=llm_job(max_tokens=2, metadata={"who": "beta"}))
        assert mine.status_code == theirs.status_code == 202
        job_id, beta_job = mine.json()["id"], theirs.json()["id"]

        # Every route answers as if the job did not exist.
        for r in (beta.get(f"/v1/jobs/{job_id}"), beta.get(f"/v1/jobs/{job_id}/events"), beta.delete(f"/v1/jobs/{job_id}")):
            assert_api_error(r, 404, "job_not_found", bearer(beta_key))
        status, body = ws_answer(stack, job_id, bearer(beta_key))
        assert status == 404 and json.loads(body)["data"]["error"]["code"] == "job_not_found", (status, body)
        listed = {j["id"] for j in beta.get("/v1/jobs", params={"limit": 200}).json()["data"]}
        assert beta_job in listed and job_id not in listed

        # The owner sees it (the refused cancel did nothing), streams it and lists it; so does admin.
        assert alpha.get(f"/v1/jobs/{job_id}").json()["metadata"] == {"who": "alpha"}
        assert ws_answer(stack, job_id, bearer(alpha_key))[0] == 200
        assert wait_done(alpha, job_id)["status"] == "succeeded"
        listed = {j["id"] for j in alpha.get("/v1/jobs", params={"limit": 200}).json()["data"]}
        assert job_id in listed and beta_job not in listed
        assert admin.get(f"/v1/jobs/{job_id}").status_code == admin.get(f"/v1/jobs/{beta_job}").status_code == 200
        assert {job_id, beta_job} <= {j["id"] for j in admin.get("/v1/jobs", params={"limit": 200}).json()["data"]}
        assert wait_done(beta, beta_job)["status"] == "succeeded"


def test_tenants_cannot_cancel_each_others_jobs_but_admin_can(stack: Stack, admin: httpx.Client, tenants: tuple[str, str]) -> None:
    alpha_key, beta_key = tenants
    with httpx.Client(base_url=stack.ingress, headers=bearer(alpha_key), timeout=60) as alpha, \
            httpx.Client(base_url=stack.ingress, headers=bearer(beta_key), timeout=60) as beta:
        job_id = alpha.post("/v1/jobs", json=llm_job(max_tokens=2000, ignore_eos=True)).json()["id"]
        assert_api_error(beta.delete(f"/v1/jobs/{job_id}"), 404, "job_not_found", bearer(beta_key))
        assert alpha.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
        assert admin.delete(f"/v1/jobs/{job_id}").status_code == 202
        assert wait_done(alpha, job_id)["status"] == "cancelled"


def test_an_openai_completion_is_a_job_of_its_tenant(stack: Stack, admin: httpx.Client, tenants: tuple[str, str]) -> None:
    alpha_key, beta_key = tenants
    alpha_oai = openai.OpenAI(base_url=stack.ingress + "/v1", api_key=alpha_key, max_retries=0, timeout=120)
    raw = alpha_oai.chat.completions.with_raw_response.create(model=LLM_MODEL, messages=MSG, max_tokens=2)  # type: ignore[arg-type]
    job_id = raw.headers["x-switchyard-job-id"]
    assert send(stack, "GET", f"/v1/jobs/{job_id}", headers=bearer(alpha_key)).json()["status"] == "succeeded"
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"):
        assert_api_error(send(stack, "GET", path, headers=bearer(beta_key)), 404, "job_not_found", bearer(beta_key))
    assert ws_answer(stack, job_id, bearer(beta_key))[0] == 404
    assert admin.get(f"/v1/jobs/{job_id}").status_code == 200


def test_idempotency_keys_are_per_tenant(stack: Stack, tenants: tuple[str, str]) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    ids = []
    for tenant_key in tenants:
        with httpx.Client(base_url=stack.ingress, headers=bearer(tenant_key), timeout=60) as c:
            first = c.post("/v1/jobs", json=llm_job(max_tokens=2), headers=key)
            again = c.post("/v1/jobs", json=llm_job(max_tokens=2), headers=key)
            assert first.status_code == again.status_code == 202, first.text
            assert "idempotent-replayed" not in first.headers and again.headers.get("idempotent-replayed") == "true"
            assert again.json()["id"] == first.json()["id"]
            ids.append(first.json()["id"])
            wait_done(c, first.json()["id"])
    assert ids[0] != ids[1], "two tenants' requests with one Idempotency-Key became one job"


# ---------------------------------------------------------------- priority capped by tier


@pytest.mark.parametrize(("tier", "asked", "want"), [
    ("low", {"priority": "high"}, 5),
    ("low", {"header": "high"}, 5),
    ("low", {}, 5),
    ("normal", {"priority": 1}, 3),
    ("normal", {"header": "1"}, 3),
    ("normal", {"priority": "low"}, 5),  # asking lower than the tier is fine
    ("high", {"priority": "high"}, 1),
    ("high", {"priority": 4}, 4),
])
def test_a_keys_tier_caps_job_priority(stack: Stack, tier: str, asked: dict[str, Any], want: int) -> None:
    key = stack.create_key(f"tier-{tier}-{uuid.uuid4().hex[:6]}", tier=tier)
    client = JobClient(stack.ingress, key=key)
    headers = {"X-Priority": asked["header"]} if "header" in asked else None
    job_id = client.submit(llm_job(max_tokens=1, priority=asked.get("priority")), headers=headers)
    assert client.get(job_id)["priority"] == want
    client.http.delete(f"/v1/jobs/{job_id}")  # 409 if it already ended: either way it no longer holds the worker


def test_a_keys_tier_caps_completion_priority(stack: Stack, free_key: str, gold_key: str, api_key: str) -> None:
    for key, extra, want in [(free_key, {"X-Priority": "high"}, 5), (free_key, {}, 5), (api_key, {"X-Priority": "high"}, 3),
                             (gold_key, {}, 1), (gold_key, {"X-Priority": "low"}, 5)]:
        oai = openai.OpenAI(base_url=stack.ingress + "/v1", api_key=key, max_retries=0, timeout=120)
        raw = oai.chat.completions.with_raw_response.create(model=LLM_MODEL, messages=MSG, max_tokens=1, extra_headers=extra)  # type: ignore[arg-type]
        job = send(stack, "GET", f"/v1/jobs/{raw.headers['x-switchyard-job-id']}", headers=bearer(key)).json()
        assert job["priority"] == want, (extra, job["priority"])


# ---------------------------------------------------------------- the keys CLI


def keys_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``./switchyard keys ...`` against the test stack (what the script execs; the state folder tells it the database and pepper)."""
    cmd = [sys.executable, "-m", "switchyard.devstack", "keys", "--state-dir", str(stack.cfg.state_dir), *args]
    return subprocess.run(cmd, env=python_env({}), capture_output=True, text=True, timeout=120)


def test_keys_cli_creates_lists_and_revokes(stack: Stack) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    made = keys_cli(stack, "create", "--tenant", tenant, "--scopes", "jobs,openai", "--tier", "low", "--name", "from the cli")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()  # alone on stdout: KEY=$(./switchyard keys create ...)
    assert re.fullmatch(r"sk-sy-[A-Za-z0-9_-]{43}", key), "not a key of the documented shape"
    assert send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 200
    assert send(stack, "GET", "/v2", headers=bearer(key)).status_code == 403

    listed = keys_cli(stack, "list", "--tenant", tenant)
    assert listed.returncode == 0, listed.stderr
    assert key[:10] in listed.stdout and key not in listed.stdout and "from the cli" in listed.stdout
    [key_id] = {m for m in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listed.stdout)}

    revoked = keys_cli(stack, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    eventually(lambda: send(stack, "GET", "/v1/jobs", headers=bearer(key)).status_code == 401, "the key revoked by the CLI to be refused", REVOKED_WITHIN_S)
    assert keys_cli(stack, "revoke", str(uuid.uuid4())).returncode != 0
    bad = keys_cli(stack, "create", "--tenant", tenant, "--scopes", "jobs,root")
    assert bad.returncode != 0 and "root" in bad.stderr

"""Every malformed, oversized or hostile request gets a precise 4xx in the one error shape."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from switchyard.devstack.client import LLM_MODEL, JobClient, llm_job

OK_INPUT = {"prompt": "hi", "max_tokens": 2}


def _post(client: JobClient, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.http.post("/v1/jobs", content=content, headers={"content-type": "application/json", **(headers or {})})


def _assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert set(err) >= {"type", "code", "message", "param"} and err["code"] == code and err["message"]
    return err


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "invalid_json"),
        (b"", 422, "validation_error"),  # no body at all
        (b'{"domain": "llm", "model": "x", "input": {"prompt": "\xff\xfe"}}', 400, "invalid_json"),  # invalid UTF-8
        (b"[]", 422, "validation_error"),
        (b'"just a string"', 422, "validation_error"),
        (b'{"domain": "audio", "model": "m", "input": {}}', 422, "validation_error"),
        (b'{"model": "m", "input": {}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "nope", "input": {"prompt": "hi"}}', 404, "model_not_found"),
        (b'{"domain": "vision", "model": "' + LLM_MODEL.encode() + b'", "input": {"images": ["aGVsbG8="]}}', 404, "model_not_found"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": 5}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a", "max_tokens": -1}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a", "max_tokens": 10000000}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"messages": []}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"messages": [{"role": "wizard", "content": "x"}]}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a", "messages": [{"role": "user", "content": "x"}]}}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a"}, "priority": 9}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a"}, "priority": "urgent"}', 422, "validation_error"),
        (b'{"domain": "llm", "model": "' + LLM_MODEL.encode() + b'", "input": {"prompt": "a"}, "surprise": 1}', 422, "validation_error"),
        (b"{\"a\":" * 5000 + b"1" + b"}" * 5000, 400, "invalid_json"),  # deeply nested: refused, not a crash
        (b'{"domain": "recsys", "model": "vision-classify", "input": {"users": [1]}}', 404, "model_not_found"),  # not a ranker
        (b'{"domain": "recsys", "model": "recsys-rank", "input": {"users": []}}', 422, "validation_error"),
        (b'{"domain": "recsys", "model": "recsys-rank", "input": {"users": [1], "k": 101}}', 422, "validation_error"),
        (b'{"domain": "recsys", "model": "recsys-rank", "input": {"users": ["u1"]}}', 422, "validation_error"),
    ],
)
def test_bad_job_bodies(client: JobClient, body: bytes, status: int, code: str) -> None:
    _assert_error(_post(client, body), status, code)


def test_validation_error_names_the_field(client: JobClient) -> None:
    err = _assert_error(client.http.post("/v1/jobs", json={"domain": "llm", "model": LLM_MODEL, "input": {"prompt": "a", "temperature": 9}}), 422, "validation_error")
    assert err["param"] == "input.temperature"
    assert err["details"][0]["loc"] == "input.temperature"


def test_oversized_body_is_refused_at_the_edge_and_in_the_api(stack, client: JobClient, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    big = b'{"domain":"llm","model":"m","input":{"prompt":"' + b"a" * (stack.cfg.max_body_bytes + 10) + b'"}}'
    _assert_error(_post(client, big), 413, "body_too_large")
    direct = httpx.post(f"http://127.0.0.1:{stack.cfg.api_port}/v1/jobs", content=big, headers={"content-type": "application/json", **auth}, timeout=30)
    _assert_error(direct, 413, "body_too_large")


def test_bad_priority_header(client: JobClient) -> None:
    _assert_error(client.http.post("/v1/jobs", json=llm_job(), headers={"X-Priority": "11"}), 422, "invalid_priority")


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}/events"])
@pytest.mark.parametrize(("job_id", "status", "code"), [(str(uuid.uuid4()), 404, "job_not_found"), ("not-a-uuid", 404, "job_not_found"), ("%00%01", 400, "bad_request")])
def test_unknown_job_ids(client: JobClient, path: str, job_id: str, status: int, code: str) -> None:
    _assert_error(client.http.get(path.format(id=job_id)), status, code)


def test_unknown_job_cancel_and_route(client: JobClient) -> None:
    _assert_error(client.http.delete(f"/v1/jobs/{uuid.uuid4()}"), 404, "job_not_found")
    _assert_error(client.http.get("/v1/nothing-here"), 404, "not_found")
    _assert_error(client.http.put("/v1/jobs"), 405, "method_not_allowed")


def test_bad_list_parameters(client: JobClient) -> None:
    _assert_error(client.http.get("/v1/jobs", params={"limit": 0}), 422, "validation_error")
    _assert_error(client.http.get("/v1/jobs", params={"status": "sleeping"}), 422, "validation_error")
    _assert_error(client.http.get("/v1/jobs", params={"cursor": "!!!"}), 422, "invalid_cursor")


def test_bad_last_event_id(client: JobClient) -> None:
    job_id = client.submit(llm_job(max_tokens=2))
    _assert_error(client.http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "drop table"}), 400, "invalid_last_event_id")
    list(client.events(job_id))


# ------------------------------------------------------------------ text the platform cannot store

NUL = "a\u0000b"  # PostgreSQL's JSONB and text columns refuse NUL
SURROGATE = "a\ud800b"  # an unpaired surrogate: valid as a JSON escape, not encodable as UTF-8


def _post_json(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    # json.dumps escapes both as \uXXXX, as a client's JSON encoder does (httpx's json= would refuse the surrogate).
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": {"prompt": NUL}}, "input.prompt"),
        ({"input": {"prompt": SURROGATE}}, "input.prompt"),
        ({"input": {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": NUL}]}}, "input.messages.1.content"),
        ({"input": {"prompt": "hi", "stop": ["x", NUL]}}, "input.stop.1"),
        ({"input": OK_INPUT, "metadata": {"team": NUL}}, "metadata.team"),
        ({"input": OK_INPUT, "metadata": {NUL: "x"}}, "metadata"),  # a bad key is named by its dict
        ({"input": OK_INPUT, "metadata": {SURROGATE: "x"}}, "metadata"),
    ],
)
def test_text_the_store_cannot_keep_is_a_422(client: JobClient, fields: dict[str, Any], param: str) -> None:
    r = _post_json(client.http, "/v1/jobs", {"domain": "llm", "model": LLM_MODEL, **fields})
    err = _assert_error(r, 422, "validation_error")
    assert err["param"] == param
    assert err["details"][0]["loc"] == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": NUL}]}, "messages.0.content"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": NUL}]}]}, "messages.0.content"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": NUL}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "user": NUL}, "user"),
        ("/v1/completions", {"prompt": NUL}, "prompt"),
        ("/v1/completions", {"prompt": [SURROGATE]}, "prompt"),
        ("/v1/embeddings", {"input": SURROGATE}, "input"),
    ],
)
def test_text_the_store_cannot_keep_is_a_400_on_openai_routes(client: JobClient, path: str, body: dict[str, Any], param: str) -> None:
    model = "smollm2-135m-embed" if path == "/v1/embeddings" else LLM_MODEL
    err = _assert_error(_post_json(client.http, path, {"model": model, **body}), 400, "invalid_value")
    assert err["param"] == param


def test_refused_text_keeps_the_ingress_connection(stack, auth: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Ten refused requests in a row on one keep-alive connection through Nginx: every one is the 4xx
    (none a 503 from a connection the API dropped), and a valid request on the same client works."""
    with httpx.Client(base_url=stack.ingress, timeout=30, headers=auth) as http:
        for i in range(10):
            if i % 2:
                _assert_error(_post_json(http, "/v1/chat/completions", {"model": LLM_MODEL, "messages": [{"role": "user", "content": NUL}]}), 400, "invalid_value")
            else:
                _assert_error(_post_json(http, "/v1/jobs", {"domain": "llm", "model": LLM_MODEL, "input": {"prompt": NUL}}), 422, "validation_error")
        r = http.post("/v1/jobs", json={"domain": "llm", "model": LLM_MODEL, "input": OK_INPUT})
        assert r.status_code == 202, r.text


# ------------------------------------------------------------------ recsys realtime routes (refused before the worker)


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        ("/v1/recommendations", {"user_id": 1, "k": 0}, 422, "validation_error", "k"),
        ("/v1/recommendations", {"user_id": 1, "k": 101}, 422, "validation_error", "k"),
        ("/v1/recommendations", {"user_id": "u1"}, 422, "validation_error", "user_id"),
        ("/v1/recommendations", {"user_id": 1, "candidates": list(range(1001))}, 422, "validation_error", "candidates"),
        ("/v1/recommendations", {"user_id": 1, "surprise": True}, 422, "validation_error", "surprise"),
        ("/v1/recommendations", {"user_id": 1, "model": "vision-classify"}, 404, "model_not_found", "model"),
        ("/v1/recommendations", {"user_id": 1, "model": "nope"}, 404, "model_not_found", "model"),
        ("/v1/recsys/events", {"user_id": 1, "item_id": 2, "event_type": "like"}, 422, "validation_error", "event_type"),
        ("/v1/recsys/events", {"user_id": 1}, 422, "validation_error", "item_id"),
    ],
)
def test_bad_recsys_bodies(client: JobClient, path: str, body: dict[str, Any], status: int, code: str, param: str) -> None:
    assert _assert_error(client.http.post(path, json=body), status, code)["param"] == param

"""Fuzz every public route of the OpenAPI document through the ingress: whatever a client sends, the
answer is never a 5xx.

Schemathesis generates valid and invalid requests (types, bounds, NUL and other odd characters,
unexpected parameters) for each operation of ``/openapi.json`` and checks ``not_a_server_error``.
Generated model names almost never exist, so a body that names a model is also tried with a real
one: that reaches admission, the job store and the engines, where text that cannot be stored or
encoded used to be a 500. Output lengths are kept short and accepted jobs are cancelled at once,
so generation on the one-slot test worker does not hold the run up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
import schemathesis.errors
from hypothesis import HealthCheck, Phase, Verbosity
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from switchyard.devstack.client import LLM_MODEL
from switchyard.devstack.stack import Stack

MAX_EXAMPLES = 20  # per operation and mode (valid, invalid): about 20 operations × 40 requests
MAX_TOKENS = 4  # cap on generated output lengths of requests that name a real model
# (connect, read) seconds per request.
TIMEOUT = (5.0, 10.0)
# Routes whose valid requests legitimately outlast TIMEOUT: completions wait for an LLM generation
# queued behind other work on a one-slot worker, and an SSE stream stays open while its job runs.
# A read timeout there is accepted long-running work (the API saw the disconnect and cancels the
# job), not an error; anywhere else it fails the test.
LONG_RUNNING = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/jobs/{job_id}/events")}
# A real model for the bodies that name one, per route (and job domain: not vision, whose generated
# images would be accepted and then fail in the worker, where later tests expect no failed vision job).
REAL_MODELS = {"/v1/chat/completions": LLM_MODEL, "/v1/completions": LLM_MODEL, "/v1/embeddings": "smollm2-135m-embed",
               "/v1/recommendations": "recsys-rank"}
JOB_MODELS = {"llm": LLM_MODEL, "recsys": "recsys-rank"}
# Routes whose bodies are not generations (no output length to cap, no prompt to add).
NOT_GENERATIONS = {"/v1/embeddings", "/v1/recommendations"}


def _plausible(params: dict[str, Any], *, generates: bool) -> dict[str, Any]:
    """Parameters made acceptable where the schema cannot say what is (cross-field rules), with short
    outputs for generations."""
    out = dict(params)
    if out.get("stream") is not True:
        out.pop("stream_options", None)
    if not generates:
        return out
    for key in ("max_tokens", "max_completion_tokens"):
        value = out.get(key)
        if (value is None and key == "max_tokens") or (type(value) in (int, float) and value > MAX_TOKENS):  # integers come as 7 or 7.0
            out[key] = MAX_TOKENS
    if out.get("logprobs") is not True and out.get("top_logprobs") is not None:
        del out["top_logprobs"]
    if "messages" in out and "prompt" in out:  # the job API takes exactly one of them
        del out["messages"]
    elif "messages" not in out and "prompt" not in out:
        out["prompt"] = "Hello"
    return out


def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Each body as generated, or, if it names a model, naming a real one (and made plausible)."""
    if context.operation is None or not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return st.just(body)
    path = context.operation.path
    if path == "/v1/jobs":
        model = JOB_MODELS.get(body.get("domain"))  # type: ignore[arg-type]
        real = {**body, "input": _plausible(body["input"], generates=body.get("domain") == "llm")} if isinstance(body.get("input"), dict) else body
    else:
        model, real = REAL_MODELS.get(path), _plausible(body, generates=path not in NOT_GENERATIONS)
    if model is None:
        return st.just(body)
    return st.sampled_from([body, {**real, "model": model}])


def flatmap_headers(context: schemathesis.HookContext, headers: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Each request as generated, or without its X-Priority (a generated one is seldom valid)."""
    if not headers or "x-priority" not in headers:
        return st.just(headers)
    return st.sampled_from([headers, {k: v for k, v in headers.items() if k != "x-priority"}])


def _cancel_unfinished_jobs(ingress: str, auth: dict[str, str], wait_s: float = 60.0) -> None:
    """Cancel what the fuzzing left queued or running, and wait until it has ended (the tests after
    this one need the worker, and some count pending jobs)."""
    deadline = time.monotonic() + wait_s
    with requests.Session() as http:
        http.headers.update(auth)
        while True:
            unfinished = [job["id"] for status in ("queued", "running")
                          for job in http.get(f"{ingress}/v1/jobs", params={"status": status, "limit": 200}, timeout=30).json()["data"]]
            if not unfinished:
                return
            assert time.monotonic() < deadline, f"jobs still unfinished after cancelling: {unfinished}"
            for job_id in unfinished:
                http.delete(f"{ingress}/v1/jobs/{job_id}", timeout=30)  # 409 if it ended meanwhile
            time.sleep(1)


@pytest.fixture(scope="module")
def api_schema(stack: Stack, auth: dict[str, str]) -> Iterator[schemathesis.BaseSchema]:
    # Reports show requests as sent, but for the key (the default also masks fields such as max_tokens as "[Filtered]").
    sanitization = {"keys-to-sanitize": ["authorization", "x-api-key"], "sensitive-markers": ["authorization"]}
    config = schemathesis.Config.from_dict({"generation": {"max-examples": MAX_EXAMPLES, "no-shrink": True}, "output": {"sanitization": sanitization}})
    schema = schemathesis.openapi.from_url(stack.ingress + "/openapi.json", config=config)
    schema.hook(flatmap_body)
    schema.hook(flatmap_headers)
    yield schema
    _cancel_unfinished_jobs(stack.ingress, auth)


def _fuzz(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode, auth: dict[str, str]) -> list[str]:
    """MAX_EXAMPLES requests generated for one operation, each with the tests' key (else nearly all
    would stop at the 401); the 5xx answers, described."""
    failures: list[str] = []

    # No shrinking: a failure is reported as found, with a curl command that reproduces it.
    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck),
                         verbosity=Verbosity.quiet)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call(timeout=TIMEOUT, headers=auth)
        except requests.exceptions.ReadTimeout:
            if (case.method.upper(), case.path) in LONG_RUNNING:
                return  # accepted long-running work (see LONG_RUNNING)
            failures.append(f"{operation.label}: no answer within {TIMEOUT[1]} s\n{case.as_curl_command(headers=auth)}")
            return
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except schemathesis.errors.FailureGroup as e:
            failures.append(str(e))
        if case.method.upper() == "POST" and case.path == "/v1/jobs" and response.status_code == 202:
            # An accepted job is not the point here: cancel it so it does not queue ahead of the rest.
            requests.delete(f"{case.operation.base_url}/v1/jobs/{response.json()['id']}", timeout=30, headers=auth)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label  # an operation with no parameters has no invalid request
    return failures


# One test that walks the operations itself: the schema exists only once the stack runs, and
# schemathesis' lazy pytest loader (schemathesis.pytest.from_fixture) fails under pytest 9
# ("'Function' object has no attribute '_nodeid'").
def test_no_request_is_a_server_error(api_schema: schemathesis.BaseSchema, auth: dict[str, str], stack: Stack) -> None:
    started = time.monotonic()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]  # the whole public API, not a fragment
    # The admin routes with an admin key (the development key), so that they are fuzzed past the 403.
    admin_auth = {"Authorization": f"Bearer {stack.dev_key}"}
    assert any(op.path.startswith("/v1/admin/") for op in operations)
    failures: list[str] = []
    for operation in operations:
        key = admin_auth if operation.path.startswith("/v1/admin/") else auth
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            failures += _fuzz(operation, mode, key)
    print(f"fuzzed {len(operations)} operations in {time.monotonic() - started:.0f} s")
    assert not failures, f"{len(failures)} requests got a 5xx:\n\n" + "\n\n".join(failures[:10])

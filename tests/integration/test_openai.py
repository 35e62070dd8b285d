"""The official OpenAI client, unmodified, against Switchyard through Nginx (llama.cpp engine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from switchyard.common.engines.factory import engine_for
from switchyard.devstack.client import LLM_MODEL, JobClient, llm_job
from switchyard.devstack.stack import VLLM_MODEL, Stack

MSG = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(params=[LLM_MODEL, VLLM_MODEL], ids=["llama.cpp", "vllm"])
def model(request: pytest.FixtureRequest, stack: Stack) -> str:
    """The same OpenAI behaviour on each real engine."""
    if request.param == VLLM_MODEL:
        assert stack.cfg.vllm, "vLLM is not installed: run build-support/setup-vllm.sh (./switchyard setup does)"
    return str(request.param)


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert LLM_MODEL in ids
    m = oai.models.retrieve(LLM_MODEL)
    assert m.id == LLM_MODEL and m.object == "model" and m.owned_by
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_chat_completion_runs_as_a_job_with_header_priority(oai: openai.OpenAI, client: JobClient, model: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=12, extra_headers={"X-Priority": "low"})  # type: ignore[arg-type]
    completion = raw.parse()
    job_id = raw.headers["x-switchyard-job-id"]
    choice = completion.choices[0]
    assert completion.id == f"chatcmpl-{job_id}" and completion.object == "chat.completion" and completion.model == model
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason in ("stop", "length")
    assert completion.usage and completion.usage.completion_tokens <= 12 and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    job = client.get(job_id)
    assert job["status"] == "succeeded" and job["domain"] == "llm" and job["priority"] == 5
    assert job["result"]["text"] == choice.message.content


def test_api_key_tier_sets_priority(stack: Stack, client: JobClient, free_key: str) -> None:
    free = openai.OpenAI(base_url=stack.ingress + "/v1", api_key=free_key, max_retries=0)
    raw = free.chat.completions.with_raw_response.create(model=LLM_MODEL, messages=MSG, max_tokens=2)  # type: ignore[arg-type]
    assert client.get(raw.headers["x-switchyard-job-id"])["priority"] == 5


def test_chat_streaming_with_usage(oai: openai.OpenAI, model: str, client: JobClient) -> None:
    with oai.chat.completions.with_streaming_response.create(
        model=model, messages=MSG, max_tokens=16, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    ) as resp:
        job_id = resp.headers["x-switchyard-job-id"]
        chunks = list(resp.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert all(c.object == "chat.completion.chunk" and c.id == f"chatcmpl-{job_id}" for c in chunks)
    assert text == client.get(job_id)["result"]["text"]


def test_n_choices_with_logprobs(oai: openai.OpenAI, model: str) -> None:
    # Greedy: a sampled token can be part of a multi-byte character (no text of its own), which this
    # accounting does not cover; the logprob structure is what is tested here.
    completion = oai.chat.completions.create(model=model, messages=MSG, max_tokens=6, n=2, logprobs=True, top_logprobs=2, temperature=0)  # type: ignore[arg-type]
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.logprobs and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)
    streamed = sum(len(c.logprobs.content) for c in completion.choices if c.logprobs)
    # An end-of-sequence token counts in usage but is not text.
    assert completion.usage and streamed <= completion.usage.completion_tokens <= streamed + 2


def test_streaming_n_choices_keeps_them_apart(oai: openai.OpenAI, model: str) -> None:
    stream = oai.chat.completions.create(model=model, messages=MSG, max_tokens=5, n=2, stream=True, seed=3)  # type: ignore[arg-type]
    texts = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts[0] and texts[1]


def test_seed_reproduces_and_stop_sequences_stop(oai: openai.OpenAI, model: str) -> None:
    def ask() -> str:
        r = oai.chat.completions.create(model=model, messages=MSG, max_tokens=20, temperature=1.0, seed=1234)  # type: ignore[arg-type]
        return r.choices[0].message.content or ""

    assert ask() == ask()
    r = oai.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
    assert " 7" not in r.choices[0].text and r.choices[0].finish_reason == "stop"


def test_max_completion_tokens_with_ignore_eos(oai: openai.OpenAI, model: str) -> None:
    r = oai.chat.completions.create(model=model, messages=MSG, max_completion_tokens=25, extra_body={"ignore_eos": True})  # type: ignore[arg-type]
    assert r.usage and r.usage.completion_tokens == 25 and r.choices[0].finish_reason == "length"


def test_legacy_completions_stream_and_logprobs(oai: openai.OpenAI, model: str) -> None:
    r = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=5, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    assert r.object == "text_completion" and lp and lp.tokens and "".join(lp.tokens) == r.choices[0].text
    assert lp.top_logprobs and all(len(t) == 2 for t in lp.top_logprobs) and lp.text_offset and lp.text_offset[0] == 0
    streamed = "".join(c.choices[0].text for c in oai.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def _post(stack: Stack, path: str, body: Any, key: str) -> httpx.Response:
    return httpx.post(stack.ingress + path, json=body, timeout=30, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": LLM_MODEL, "messages": []}, "messages", "invalid_value"),
        ({"model": LLM_MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"model": LLM_MODEL, "messages": [{"role": "user", "content": 3}]}, "messages.0.content", "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "max_tokens": -1}, "max_tokens", "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "max_tokens": 10_000_000}, "max_tokens", "context_length_exceeded"),
        ({"model": LLM_MODEL, "messages": MSG, "temperature": 5}, "temperature", "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "n": 0}, "n", "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "top_logprobs": 2}, None, "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "stream_options": {"include_usage": True}}, None, "invalid_value"),
        ({"model": LLM_MODEL, "messages": MSG, "tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
        ({"model": LLM_MODEL, "messages": MSG, "frobnicate": True}, "frobnicate", "invalid_value"),
        ({"model": LLM_MODEL, "messages": [{"role": "user", "content": "word " * 6000}], "max_tokens": 8}, "messages", "context_length_exceeded"),
    ],
)
def test_chat_bad_input_is_a_precise_400(stack: Stack, gold_key: str, body: dict[str, Any], param: str | None, code: str) -> None:
    r = _post(stack, "/v1/chat/completions", body, gold_key)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]
    if param:
        assert err["param"] == param


def test_invalid_utf8_and_unknown_model(stack: Stack, oai: openai.OpenAI, auth: dict[str, str]) -> None:
    r = httpx.post(stack.ingress + "/v1/chat/completions", content=b'{"model": "x", "messages": [{"role": "user", "content": "\xff"}]}',
                   headers={"content-type": "application/json", **auth})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-17", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=LLM_MODEL, prompt="x", max_tokens=3, echo=True)


async def _engine_running(stack: Stack, model: str) -> float:
    """Requests the model's engine is generating right now, by the engine's own metrics."""
    endpoint = stack.catalog().registry.get(model).endpoints[0]  # type: ignore[union-attr]
    async with httpx.AsyncClient() as http:
        return (await engine_for(endpoint, http).metrics()).running or 0.0


def _engine_busy(stack: Stack, model: str) -> float:
    return asyncio.run(_engine_running(stack, model))


def _wait_engine_busy(stack: Stack, model: str) -> None:
    """Before the client leaves: the engine is generating for it (so a pass cannot come from a job that just ended)."""
    deadline, busy = time.monotonic() + 30, 0.0
    while not busy and time.monotonic() < deadline:
        time.sleep(0.1)
        busy = _engine_busy(stack, model)
    assert busy > 0, "the engine never reported the request as running"


def _wait_cancelled(stack: Stack, client: JobClient, job_id: str, model: str = LLM_MODEL) -> None:
    deadline = time.monotonic() + 20
    while client.get(job_id)["status"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get(job_id)["status"] == "cancelled"
    while _engine_busy(stack, model) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _engine_busy(stack, model) == 0, "the engine kept generating for a client that left"


def test_client_disconnect_mid_stream_cancels_the_job_and_the_engine_request(stack: Stack, client: JobClient, auth: dict[str, str], model: str) -> None:
    body = {"model": model, "messages": MSG, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", stack.ingress + "/v1/chat/completions", json=body, timeout=30, headers=auth) as r:
        job_id = r.headers["x-switchyard-job-id"]
        for i, _ in enumerate(r.iter_lines()):
            if i > 10:
                # Still connected (leaving the line iterator closes the connection): the engine is
                # generating for this client right now.
                _wait_engine_busy(stack, model)
                break
    _wait_cancelled(stack, client, job_id, model)


def test_client_disconnect_while_waiting_cancels_a_non_streamed_completion(stack: Stack, client: JobClient, auth: dict[str, str]) -> None:
    user = f"impatient-{uuid.uuid4().hex[:8]}"
    body = {"model": LLM_MODEL, "messages": MSG, "max_tokens": 3000, "ignore_eos": True, "user": user}

    async def leave_while_it_generates() -> str:
        """Wait for the answer in a task; once the job exists and the engine generates it, give up."""
        async with httpx.AsyncClient(base_url=stack.ingress, timeout=30, headers=auth) as api, httpx.AsyncClient(timeout=120, headers=auth) as leaving:
            waiting = asyncio.create_task(leaving.post(stack.ingress + "/v1/chat/completions", json=body))
            deadline, job_id, busy = time.monotonic() + 30, None, 0.0
            while not (job_id and busy) and time.monotonic() < deadline and not waiting.done():
                await asyncio.sleep(0.1)
                if job_id is None:
                    jobs = (await api.get("/v1/jobs", params={"domain": "llm", "limit": 50})).json()["data"]
                    job_id = next((j["id"] for j in jobs if j["metadata"].get("user") == user), None)
                else:
                    busy = await _engine_running(stack, LLM_MODEL)
            answered = waiting.result() if waiting.done() and not waiting.exception() else None
            assert job_id and busy > 0, (f"job {job_id}: the engine never reported it as running "
                                         f"(the completion answered {answered.status_code if answered else None}: {answered.text[:300] if answered else ''})")
            assert not waiting.done(), "the completion ended before the client left"
            waiting.cancel()  # the client stops waiting...
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await leaving.aclose()  # ...and its connection is closed
            return job_id

    _wait_cancelled(stack, client, asyncio.run(leave_while_it_generates()))


def test_overload_answers_429_with_retry_after(stack: Stack, client: JobClient, oai: openai.OpenAI) -> None:
    worker = stack.procs["worker-llm"].popen
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)  # nothing drains the backlog while it fills
    backlog: list[str] = []
    limit = int(stack.cfg.api_env["SWITCHYARD_MAX_PENDING_PER_MODEL"])
    try:
        while len(backlog) < limit:
            r = client.http.post("/v1/jobs", json=llm_job(max_tokens=1))
            if r.status_code == 429:
                break
            backlog.append(r.json()["id"])
        with pytest.raises(openai.RateLimitError) as e:
            oai.chat.completions.create(model=LLM_MODEL, messages=MSG, max_tokens=2)  # type: ignore[arg-type]
        assert e.value.response.headers["retry-after"] == "1" and e.value.body["code"] == "overloaded"  # type: ignore[index]
    finally:
        for job_id in backlog:
            client.http.delete(f"/v1/jobs/{job_id}")
        os.kill(worker.pid, signal.SIGCONT)
    for job_id in backlog:
        # A job the worker had already taken before it was paused may finish before its cancel lands.
        assert list(client.events(job_id))[-1].data["status"] in ("cancelled", "succeeded")
    assert oai.chat.completions.create(model=LLM_MODEL, messages=MSG, max_tokens=2).choices  # type: ignore[arg-type]

"""A completion job's events as OpenAI answers: exact bytes on the wire, and ``reset`` handling."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from switchyard.api.openai import rendering
from switchyard.api.openai.rendering import Reply
from switchyard.common.contracts import JobEvent
from switchyard.common.events import TokenLedger

JOB_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def ev(n: int, type_: str, **data: Any) -> JobEvent:
    return JobEvent(id=f"1-{n}", type=type_, data=data)  # type: ignore[arg-type]


# Attempt 1 streams "He", "llo"; attempt 2 diverges ("He", "y!"): clients drop the partial output.
EVENTS = [
    ev(1, "status", status="queued"), ev(2, "token", choice=0, index=0, text="He"), ev(3, "token", choice=0, index=1, text="llo"),
    ev(4, "reset", attempt=2), ev(5, "token", choice=0, index=0, text="He"), ev(6, "token", choice=0, index=1, text="y!"),
    ev(7, "result", result={"choices": [{"index": 0, "text": "Hey!", "finish_reason": "length"}]}, usage=USAGE),
    ev(8, "status", status="succeeded"),
]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[JobEvent]:
    feed = list(EVENTS)

    async def job_events(res: Any, job: Any, after: str = "0-0") -> AsyncIterator[JobEvent | None]:
        for e in feed:
            yield None  # an idle interval changes nothing
            yield e

    monkeypatch.setattr(rendering, "job_events", job_events)
    return feed


def reply(kind: str, *, include_usage: bool = False, logprobs: bool = False) -> Reply:
    job = SimpleNamespace(id=JOB_ID, created_at=CREATED, model="m", model_spec={"llm": {}})
    return Reply(SimpleNamespace(), job, kind, 1, logprobs, include_usage)  # type: ignore[arg-type]


async def body(response: Any) -> str:
    return "".join([part async for part in response.body_iterator])


def chunk(obj: str, prefix: str, choices: str, usage: str | None = None) -> str:
    tail = f',"usage":{usage}' if usage is not None else ""
    return (f'data: {{"id":"{prefix}-{JOB_ID}","object":"{obj}","created":{int(CREATED.timestamp())},"model":"m",'
            f'"system_fingerprint":null,"choices":[{choices}]{tail}}}\n\n')


@pytest.mark.asyncio
async def test_chat_stream_bytes_and_no_token_twice_after_a_reset(events: list[JobEvent]) -> None:
    got = await body(rendering.respond_stream(reply("chat")))
    c = "chat.completion.chunk"
    assert got == (
        chunk(c, "chatcmpl", '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}')
        + chunk(c, "chatcmpl", '{"index":0,"finish_reason":null,"logprobs":null,"delta":{"content":"He"}}')
        + chunk(c, "chatcmpl", '{"index":0,"finish_reason":null,"logprobs":null,"delta":{"content":"llo"}}')
        + chunk(c, "chatcmpl", '{"index":0,"finish_reason":"length","logprobs":null,"delta":{}}')
        + "data: [DONE]\n\n"
    )


@pytest.mark.asyncio
async def test_text_stream_with_usage(events: list[JobEvent]) -> None:
    got = await body(rendering.respond_stream(reply("text", include_usage=True)))
    t = "text_completion"
    assert got == (
        chunk(t, "cmpl", '{"index":0,"finish_reason":null,"logprobs":null,"text":"He"}', "null")
        + chunk(t, "cmpl", '{"index":0,"finish_reason":null,"logprobs":null,"text":"llo"}', "null")
        + chunk(t, "cmpl", '{"index":0,"finish_reason":"length","logprobs":null,"text":""}', "null")
        + chunk(t, "cmpl", "", json.dumps(USAGE, separators=(",", ":")))
        + "data: [DONE]\n\n"
    )


@pytest.mark.asyncio
async def test_a_failed_job_streams_its_error(events: list[JobEvent]) -> None:
    events[6:] = [ev(7, "status", status="failed", error={"type": "EngineUnavailable", "message": "down"})]
    got = await body(rendering.respond_stream(reply("text")))
    assert got.endswith('data: {"error": {"type": "api_error", "code": "EngineUnavailable", "message": "down", "param": null}}\n\ndata: [DONE]\n\n')


@pytest.mark.asyncio
async def test_whole_completion_holds_the_last_attempt(events: list[JobEvent]) -> None:
    r = reply("chat", logprobs=True)
    out = await rendering.collect(r)
    assert out.tokens.texts() == {0: ["He", "y!"]} and out.error is None
    payload = rendering._whole(r, out).model_dump(mode="json")
    assert json.dumps(payload, separators=(",", ":")) == (
        f'{{"id":"chatcmpl-{JOB_ID}","object":"chat.completion","created":{int(CREATED.timestamp())},"model":"m","system_fingerprint":null,'
        '"choices":[{"index":0,"finish_reason":"length","logprobs":{"content":[]},"message":{"role":"assistant","content":"Hey!"}}],'
        f'"usage":{json.dumps(USAGE, separators=(",", ":"))}}}'
    )


def test_token_ledger_positions_across_resets() -> None:
    ledger = TokenLedger()
    fresh = [ledger.apply(e) for e in EVENTS]
    assert fresh == [False, True, True, False, False, False, False, False]
    assert ledger.texts() == {0: ["He", "y!"]}
    # A longer retry: positions beyond what was handed on are new again.
    assert ledger.apply(ev(9, "reset")) is False
    assert [ledger.apply(ev(10 + i, "token", choice=0, text=t)) for i, t in enumerate("abc")] == [False, False, True]

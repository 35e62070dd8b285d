"""Endpoint fallback with a breaker per endpoint and the LLM's OOM policy: an open breaker is skipped
(fail fast, with the time to the next probe, when every one is), the caller's own errors and OOMs
never open one, and an OOM ends the attempt when the caller counts OOMs itself."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from switchyard.common.breaker import BreakerBoard
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.fallback import Attempt, NoEndpointAnswered, breaker_key, first_endpoint_that_works
from switchyard.common.engines.oom import EngineOutOfMemory
from switchyard.common.llm_generation import OomState
from switchyard.common.model_registry import Endpoint

pytestmark = pytest.mark.asyncio

EPS = [Endpoint(engine="vllm", url="http://a", engine_model="m"), Endpoint(engine="llamacpp", url="http://b", engine_model="m")]
OOM = EngineOutOfMemory(500, "Compute error.", source="llamacpp")


def board() -> BreakerBoard:
    return BreakerBoard(fail_max=2, reset_timeout_s=0.2, exclude=[asyncio.CancelledError])


def calls_with(failures: dict[str, Exception]) -> tuple[list[str], object]:
    seen: list[str] = []

    async def call(attempt: Attempt) -> str:
        seen.append(attempt.endpoint.url)
        if attempt.endpoint.url in failures:
            raise failures[attempt.endpoint.url]
        return attempt.endpoint.url

    return seen, call


async def test_open_breaker_is_skipped_then_probed_once_and_closes() -> None:
    b = board()
    seen, call = calls_with({"http://a": httpx.ConnectError("refused")})
    for _ in range(2):
        assert (await first_endpoint_that_works("m", EPS, call, breakers=b))[0] == "http://b"  # type: ignore[arg-type]
    assert b.state(breaker_key(EPS[0])) == "open" and seen == ["http://a", "http://b"] * 2
    seen.clear()
    assert (await first_endpoint_that_works("m", EPS, call, breakers=b))[0] == "http://b"  # type: ignore[arg-type]
    assert seen == ["http://b"]  # not even tried while open
    await asyncio.sleep(0.25)
    assert b.state(breaker_key(EPS[0])) == "half-open"
    seen.clear()
    _, ok = calls_with({})
    assert (await first_endpoint_that_works("m", EPS, ok, breakers=b))[0] == "http://a"  # type: ignore[arg-type]
    assert b.state(breaker_key(EPS[0])) == "closed"


async def test_every_breaker_open_fails_fast_with_the_time_to_the_probe() -> None:
    b = board()
    down = {"http://a": httpx.ConnectError("refused"), "http://b": EngineError(502, "bad gateway")}
    seen, call = calls_with(down)
    for _ in range(2):
        with pytest.raises(NoEndpointAnswered) as exc:
            await first_endpoint_that_works("m", EPS, call, breakers=b)  # type: ignore[arg-type]
        assert exc.value.retry_after_s is None  # endpoints were tried: a plain retry
    seen.clear()
    with pytest.raises(NoEndpointAnswered) as exc:
        await first_endpoint_that_works("m", EPS, call, breakers=b)  # type: ignore[arg-type]
    assert seen == [] and exc.value.error.kind == "EngineUnavailable" and exc.value.error.retryable
    assert exc.value.retry_after_s is not None and 0 < exc.value.retry_after_s <= 0.2


async def test_bad_input_and_oom_never_open_a_breaker() -> None:
    b = board()
    for failure in (EngineError(400, "bad"), OOM):
        _, call = calls_with({"http://a": failure})
        for _ in range(3):
            with pytest.raises(EngineError):
                await first_endpoint_that_works("m", EPS, call, breakers=b, oom_ends_attempt=True)  # type: ignore[arg-type]
    assert b.state(breaker_key(EPS[0])) == "closed"


async def test_oom_ends_the_attempt_only_when_asked() -> None:
    seen, call = calls_with({"http://a": OOM})
    with pytest.raises(EngineOutOfMemory):
        await first_endpoint_that_works("m", EPS, call, oom_ends_attempt=True)  # type: ignore[arg-type]
    assert seen == ["http://a"]
    seen.clear()
    assert (await first_endpoint_that_works("m", EPS, call))[0] == "http://b"  # type: ignore[arg-type]  # realtime: the next at once


async def test_skipped_positions_are_not_tried() -> None:
    seen, call = calls_with({})
    assert (await first_endpoint_that_works("m", EPS, call, skip={0}))[0] == "http://b"  # type: ignore[arg-type]
    assert seen == ["http://b"]


async def test_oom_state_passes_over_an_endpoint_after_n_ooms_and_survives_the_heartbeat() -> None:
    state = OomState(None)
    assert state.passed_over(2, switch_after=2) == set()
    state.count(0)
    assert state.passed_over(2, switch_after=2) == set()
    state.count(0)
    assert state.passed_over(2, switch_after=2) == {0}
    again = OomState(state.as_details())  # what the next attempt reads from the heartbeat details
    assert again.passed_over(2, switch_after=2) == {0}
    again.count(1)
    again.count(1)
    assert again.passed_over(2, switch_after=2) == set()  # every endpoint ran out: all are tried again
    assert OomState("garbage").ooms == {} and OomState({"ooms": {"1": 3}}).passed_over(2, 2) == {1}

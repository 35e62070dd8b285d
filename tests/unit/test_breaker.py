"""The circuit breaker: opens after consecutive endpoint failures, lets one probe through when the
reset timeout has passed, and never counts the caller's own errors."""

from __future__ import annotations

import asyncio

import pytest

from switchyard.common.breaker import Breaker, BreakerOpen

pytestmark = pytest.mark.asyncio


class Down(Exception):
    pass


async def fail(b: Breaker) -> None:
    async with b.guard():
        raise Down


async def succeed(b: Breaker, delay: float = 0.0) -> str:
    async with b.guard():
        await asyncio.sleep(delay)
        return "ok"


async def test_opens_after_fail_max_and_reports_time_to_probe() -> None:
    b = Breaker("t", fail_max=2, reset_timeout_s=0.3)
    for _ in range(2):
        with pytest.raises(Down):  # the endpoint's own error, also for the call that trips it
            await fail(b)
    assert b.state == "open"
    with pytest.raises(BreakerOpen) as exc:
        await succeed(b)
    assert 0 < exc.value.retry_after_s <= 0.3


async def test_one_probe_at_a_time_when_half_open_then_closed_on_success() -> None:
    b = Breaker("t", fail_max=1, reset_timeout_s=0.1)
    with pytest.raises(Down):
        await fail(b)
    await asyncio.sleep(0.15)
    assert b.state == "half-open"
    results = await asyncio.gather(succeed(b, delay=0.05), succeed(b), succeed(b), return_exceptions=True)
    assert results[0] == "ok" and all(isinstance(r, BreakerOpen) for r in results[1:])
    assert b.state == "closed" and await succeed(b) == "ok"


async def test_failed_probe_reopens() -> None:
    b = Breaker("t", fail_max=1, reset_timeout_s=0.1)
    with pytest.raises(Down):
        await fail(b)
    await asyncio.sleep(0.15)
    with pytest.raises(Down):
        await fail(b)
    assert b.state == "open"


async def test_successes_reset_the_failure_count() -> None:
    b = Breaker("t", fail_max=2, reset_timeout_s=10)
    for _ in range(5):  # fail, ok, fail, ok...: never two failures in a row, so it never opens
        with pytest.raises(Down):
            await fail(b)
        assert await succeed(b) == "ok"
    assert b.state == "closed"

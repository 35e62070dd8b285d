"""heartbeating(): a cancellation the activity's body swallowed is delivered again (issue 9)."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.testing import ActivityEnvironment

from switchyard.common.temporal import HEARTBEAT_EVERY, heartbeating

pytestmark = pytest.mark.asyncio


async def _generate(started: asyncio.Event, tokens: list[int]) -> None:
    async with heartbeating([0]):
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            # What Python 3.11's asyncio.wait_for does when the cancel lands as the operation it
            # waits for completes (redis-py wraps every socket write in one): the cancel is gone.
            pass
        while True:  # ...and generation goes on
            tokens.append(len(tokens))
            await asyncio.sleep(0.01)


async def test_a_swallowed_cancel_is_delivered_again_within_a_heartbeat() -> None:
    env, started = ActivityEnvironment(), asyncio.Event()
    tokens: list[int] = []
    beats: list[object] = []
    env.on_heartbeat = beats.append
    run = asyncio.ensure_future(env.run(_generate, started, tokens))
    await started.wait()
    env.cancel()  # once, as a Temporal worker does
    t0 = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=5 * HEARTBEAT_EVERY.total_seconds())
    assert time.monotonic() - t0 < 2.5 * HEARTBEAT_EVERY.total_seconds()
    assert tokens, "the body did swallow the first cancel"
    assert beats


async def test_a_body_that_ends_normally_is_untouched() -> None:
    async def quick() -> str:
        async with heartbeating([0]):
            await asyncio.sleep(0.01)
        return "done"

    assert await ActivityEnvironment().run(quick) == "done"

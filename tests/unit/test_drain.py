"""heartbeating() when the worker drains: the attempt is checkpointed and handed back at once
(a retryable WorkerDraining error), not after the worker's grace period."""

from __future__ import annotations

import asyncio
import time

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from switchyard.common.temporal import DRAIN_RETRY_DELAY, WORKER_DRAINING, handed_back, heartbeating

pytestmark = pytest.mark.asyncio


async def _generate(started: asyncio.Event, checkpoint: list[object], swallow: bool) -> None:
    async with heartbeating(checkpoint):
        started.set()
        while True:
            try:
                checkpoint[0] = {"done": int(checkpoint[0]["done"]) + 1}  # type: ignore[index]
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if not swallow:
                    raise
                swallow = False  # what Python 3.11's wait_for may do to one cancel


@pytest.mark.parametrize("swallow", [False, True])
async def test_a_draining_worker_hands_the_attempt_back_with_its_checkpoint(swallow: bool) -> None:
    env, started = ActivityEnvironment(), asyncio.Event()
    beats: list[object] = []
    env.on_heartbeat = beats.append
    checkpoint: list[object] = [{"done": 0}]
    run = asyncio.ensure_future(env.run(_generate, started, checkpoint, swallow))
    await started.wait()
    await asyncio.sleep(0.05)
    before = handed_back()
    env.worker_shutdown()
    t0 = time.monotonic()
    with pytest.raises(ApplicationError) as e:
        await asyncio.wait_for(run, timeout=3)
    took = time.monotonic() - t0
    assert e.value.type == WORKER_DRAINING and not e.value.non_retryable
    assert e.value.next_retry_delay == DRAIN_RETRY_DELAY
    # At once (well within the 5 s grace period); a swallowed cancel is repeated on the next beat.
    assert took < (0.5 if not swallow else 1.6), took
    assert handed_back() == before + 1
    # The last heartbeat carries the checkpoint as it was when the attempt stopped.
    assert beats[-1] == checkpoint[0] and checkpoint[0]["done"] > 1  # type: ignore[index]


async def test_a_job_cancellation_during_a_drain_stays_a_cancellation() -> None:
    env, started = ActivityEnvironment(), asyncio.Event()
    run = asyncio.ensure_future(env.run(_generate, started, [{"done": 0}], False))
    await started.wait()
    env.cancel()
    env.worker_shutdown()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=3)


async def test_a_body_that_ends_before_the_drain_returns_normally() -> None:
    async def quick() -> str:
        async with heartbeating([0]):
            await asyncio.sleep(0.01)
        return "done"

    env = ActivityEnvironment()
    assert await env.run(quick) == "done"

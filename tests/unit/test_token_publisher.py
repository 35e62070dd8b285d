"""Retry-safe token publishing, against the real Redis (no duplicates while a retry reproduces)."""

from __future__ import annotations

import asyncio
import os
import uuid

from switchyard.common.events import EventBus, make_redis
from switchyard.common.token_publisher import TokenPublisher

REDIS_URL = os.environ.get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")


def _run(attempt_1: list[str], attempt_2: list[str]) -> list[tuple[str, dict[str, object]]]:
    async def go() -> list[tuple[str, dict[str, object]]]:
        redis = make_redis(REDIS_URL)
        bus = EventBus(redis, ttl_s=60, maxlen=1000)
        job = f"unit-{uuid.uuid4()}"
        first = TokenPublisher(bus, job, 1, {})
        for t in attempt_1:
            await first.token(0, t, [])
        # The worker died here; the retry starts from what clients hold.
        retry = TokenPublisher(bus, job, 2, await bus.tokens_since_reset(job))
        for t in attempt_2:
            await retry.token(0, t, [])
        await retry.finish()
        events: list[tuple[str, dict[str, object]]] = [(e.type, e.data) for e in await bus.read(job)]
        assert "".join((await bus.tokens_since_reset(job))[0]) == "".join(attempt_2)
        await redis.aclose()
        return events

    return asyncio.run(go())


def test_a_retry_that_reproduces_sends_nothing_twice() -> None:
    events = _run(["a", "b"], ["a", "b", "c", "d"])
    assert [d["text"] for t, d in events if t == "token"] == ["a", "b", "c", "d"]
    assert [d["index"] for t, d in events if t == "token"] == [0, 1, 2, 3]
    assert not [t for t, _ in events if t == "reset"]


def test_a_divergent_retry_resets_then_resends() -> None:
    events = _run(["a", "b", "c"], ["a", "x", "y"])
    kinds = [t for t, _ in events]
    assert kinds.count("reset") == 1
    after = events[kinds.index("reset") + 1 :]
    assert [d["text"] for _, d in after] == ["a", "x", "y"]


def test_a_shorter_retry_resets_at_the_end() -> None:
    events = _run(["a", "b", "c"], ["a", "b"])
    assert [t for t, _ in events][-3:] == ["reset", "token", "token"]

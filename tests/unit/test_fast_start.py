"""Fast start's hand-over between the API's run and the workflow's activity, on the real Redis
(switchyard.common.fast_start): who runs the job, the end record, a lapsed lease, a cancel."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from switchyard.common import fast_start
from switchyard.common.contracts import LlmChoice, LlmGeneration, Timings, Usage
from switchyard.common.events import make_redis
from switchyard.common.fast_start import FastStartKeys, RunEnd, RunError

pytestmark = pytest.mark.asyncio
REDIS_URL = os.environ.get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest_asyncio.fixture
async def redis() -> AsyncIterator[Redis]:
    r = make_redis(REDIS_URL)
    yield r
    await r.aclose()


def _gen(text: str) -> LlmGeneration:
    return LlmGeneration(choices=[LlmChoice(index=0, text=text, finish_reason="stop")], usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
                         timings=Timings(queue_ms=0.1), endpoint="llamacpp:http://e")


async def test_without_a_fast_start_the_worker_runs_the_job(redis: Redis) -> None:
    keys, job = FastStartKeys(redis, 60), str(uuid.uuid4())
    assert await keys.adopt(job) == ("none", None)
    assert not await keys.claim(job, "late")  # an API that comes after the worker does not run it too


async def test_the_activity_adopts_the_apis_generation(redis: Redis) -> None:
    keys, job = FastStartKeys(redis, 60), str(uuid.uuid4())
    assert await keys.claim(job, "t1")
    assert not await keys.claim(job, "t2")  # one run per job
    assert await keys.adopt(job) == ("running", None)
    waiting = asyncio.create_task(keys.wait_end(job, 5.0))
    await asyncio.sleep(0.05)
    assert await keys.renew(job, "t1") == "held"
    assert await keys.end(job, "t1", RunEnd(outcome="succeeded", generation=_gen("hi there")))
    end = await waiting
    assert end is not None and end.generation is not None and end.generation.choices[0].text == "hi there"
    # The record was taken: a later attempt finds the run given back, and the API's run counted.
    assert await keys.adopt(job) == ("taken", None)


async def test_a_failed_run_is_read_once_then_the_worker_retries(redis: Redis) -> None:
    keys, job = FastStartKeys(redis, 60), str(uuid.uuid4())
    assert await keys.claim(job, "t")
    err = RunError(type="EngineOutOfMemory", message="CUDA out of memory", retryable=True)
    assert await keys.end(job, "t", RunEnd(outcome="failed", error=err, ooms={"ooms": {"0": 1}}))
    kind, end = await keys.adopt(job)
    assert kind == "record" and end is not None and end.error == err and end.ooms == {"ooms": {"0": 1}}
    assert (await keys.adopt(job))[0] == "taken"  # the retry runs it itself


async def test_a_lapsed_lease_is_taken_over_and_the_late_api_cannot_record(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_start, "LEASE_MS", 200)
    keys, job = FastStartKeys(redis, 60), str(uuid.uuid4())
    assert await keys.claim(job, "t")
    assert (await keys.adopt(job))[0] == "running"
    await asyncio.sleep(0.3)  # the API died: no renewal
    assert await keys.adopt(job) == ("taken", None)
    assert await keys.renew(job, "t") == "lost"  # an API that was only stalled learns it lost the run...
    assert not await keys.end(job, "t", RunEnd(outcome="succeeded", generation=_gen("late")))  # ...and records nothing
    assert await keys.wait_end(job, 0.1) is None


async def test_a_cancel_reaches_the_run_and_the_activity_waits_for_its_own(redis: Redis) -> None:
    keys, job = FastStartKeys(redis, 60), str(uuid.uuid4())
    assert await keys.claim(job, "t")
    await keys.request_cancel(job)
    assert await keys.renew(job, "t") == "cancel"
    assert await keys.api_holds_lease(job)
    assert await keys.end(job, "t", None)  # stopped without a record
    assert not await keys.api_holds_lease(job)
    assert await keys.adopt(job) == ("cancelling", None)  # not taken over: the job is being cancelled

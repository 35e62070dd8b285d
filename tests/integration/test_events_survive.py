"""Events that survive (issue 15): a client following a job always sees it end, and a lost event
stream costs no result and no token, on the real stack (Temporal, PostgreSQL, Redis, llama.cpp).

The machine's shared Redis is never restarted or flushed here: a lost stream is simulated by
deleting that one job's stream key (what a flush or a restart without persistence does to it), and
a Redis that fails between the job's row and its stream by the fault injector (fault_proxy.py, a
TCP proxy that drops connections) in front of the real Redis. Restarts of a real Redis, with AOF
persistence and without any, are in tests/unit/test_events_survive.py (a private redis-server).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import redis
from fault_proxy import FaultProxy  # pants: no-infer-dep (a test util beside conftest.py)
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobOutcome, JobStatus, Usage
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.events import EventBus, make_redis, stream_key
from switchyard.common.jobflow import finish
from switchyard.common.payload_codec import KeyRing, data_converter
from switchyard.devstack.client import LLM_MODEL, Event, JobClient, llm_job, visible_text
from switchyard.devstack.stack import Stack


@workflow.defn(name="EventsSurviveFinish")
class FinishOnly:
    """The end of every job workflow (``jobflow.finish``, the real ``job.finish`` activity and its
    retry policy), alone: the test plays the part of the generation before it."""

    @workflow.run
    async def run(self, outcome: JobOutcome) -> None:
        await finish(outcome)


def ring_of(stack: Stack) -> KeyRing:
    return KeyRing.parse(json.loads(stack.payload_env["SWITCHYARD_PAYLOAD_KEYS"]), stack.payload_env["SWITCHYARD_PAYLOAD_KEY_ID"])


def direct_redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.cfg.redis_url)


def stream_of(stack: Stack, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The job's stream as Redis holds it: (type, data) per event."""
    rows = direct_redis(stack).xrange(stream_key(job_id))
    return [(f[b"type"].decode(), json.loads(f[b"data"])) for _, f in rows]  # type: ignore[union-attr]


def assert_whole(events: list[Event], text: str) -> None:
    """The client's view by the ``reset`` rule: between resets, token positions run 0, 1, 2... (none
    seen twice, none skipped), and the tokens after the last reset are the whole answer."""
    segments: list[list[int]] = [[]]
    for e in events:
        if e.type == "reset":
            segments.append([])
        elif e.type == "token":
            segments[-1].append(e.data["index"])
    for seg in segments:
        assert seg == list(range(len(seg))), seg
    assert visible_text(events) == text


def follow_within(client: JobClient, job_id: str, timeout_s: float, last_event_id: str | None = None) -> list[Event]:
    """Follow a job's events to its end; fail (rather than hang: keep-alive pings hold a stream
    open forever) when the end does not come within ``timeout_s``."""
    seen: list[Event] = []
    done = threading.Event()

    def follow() -> None:
        try:
            for e in client.events(job_id, last_event_id=last_event_id, timeout=timeout_s):
                seen.append(e)
        finally:
            done.set()

    threading.Thread(target=follow, name=f"follow-{job_id}", daemon=True).start()
    assert done.wait(timeout_s), f"job {job_id}: no end within {timeout_s:.0f} s; events so far: {[(e.type, e.data) for e in seen]}"
    return seen


# ---------------------------------------------------------------- the end, whatever failed


RESULT_TEXT = "The sea is wide."


def _finish_with_redis_cut(stack: Stack, client: JobClient, *, restore_before_client: bool) -> tuple[str, list[Event]]:
    """A job ends while Redis is cut off from its ``job.finish`` (fault injector between the
    activity and the real Redis): the row is written, the publish fails. Returns the job id and
    what a client following it through the API saw."""
    host_port = urlsplit(stack.cfg.redis_url)
    proxy = FaultProxy(host_port.hostname or "127.0.0.1", host_port.port or 6379).start()
    ring = ring_of(stack)
    job_id = str(uuid.uuid4())
    outcome = JobOutcome(job_id=job_id, status=JobStatus.succeeded,
                         result={"text": RESULT_TEXT, "finish_reason": "stop", "choices": [{"index": 0, "text": RESULT_TEXT, "finish_reason": "stop"}]},
                         usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7))

    async def scenario() -> list[Event]:
        engine = make_engine(stack.cfg.postgres_dsn)
        store = JobStore(engine)
        direct = EventBus(make_redis(stack.cfg.redis_url), ttl_s=600, maxlen=1000)
        cut_off = make_redis(f"redis://127.0.0.1:{proxy.port}{host_port.path or '/0'}")
        books = JobBookkeeping(store, EventBus(cut_off, ttl_s=600, maxlen=1000), ring)
        temporal = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", data_converter=data_converter(ring))
        # The job as the API accepts it and a worker runs it (dispatched: the outbox leaves it alone).
        await store.create({"id": uuid.UUID(job_id), "tenant": "tests", "domain": "llm", "model": LLM_MODEL, "status": JobStatus.queued.value,
                            "priority": 3, "input": {"prompt": "x"}, "metadata_": {}})
        await store.mark_dispatched(uuid.UUID(job_id))
        await direct.publish(job_id, "status", {"status": "queued"})
        assert await store.mark_running(job_id) == 1
        await direct.publish(job_id, "status", {"status": "running", "attempt": 1})
        for i, t in enumerate(["The sea", " is wide."]):
            await direct.publish(job_id, "token", {"choice": 0, "index": i, "text": t})
        queue = f"events-survive-{uuid.uuid4().hex[:8]}"
        try:
            async with Worker(temporal, task_queue=queue, workflows=[FinishOnly], activities=[books.finish], workflow_runner=UnsandboxedWorkflowRunner()):
                proxy.cut()
                handle = await temporal.start_workflow(FinishOnly.run, outcome, id=f"finish-{job_id}", task_queue=queue,
                                                       execution_timeout=timedelta(minutes=2))
                # The fault took hold: the row says succeeded, the stream has no end, finish keeps failing.
                deadline = time.monotonic() + 30
                while (row := await store.get(uuid.UUID(job_id))) is None or row.status != JobStatus.succeeded.value:
                    assert time.monotonic() < deadline, "job.finish never wrote the row"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # a few retries of job.finish, all cut off
                assert [t for t, _ in stream_of(stack, job_id)] == ["status", "status", "token", "token"]
                assert proxy.refused + proxy.closed > 0
                assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
                if restore_before_client:
                    proxy.restore()  # job.finish's next retry gets through
                    await asyncio.wait_for(handle.result(), 30)
                    seen = await asyncio.to_thread(follow_within, client, job_id, 30)
                else:
                    # Redis stays cut off from the worker: the API publishes the end from the row.
                    seen = await asyncio.to_thread(follow_within, client, job_id, 30)
                    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # the worker still could not
                    proxy.restore()
                    await asyncio.wait_for(handle.result(), 30)  # its retry then finds the end there and adds none
        finally:
            proxy.stop()
            await cut_off.aclose()
            await direct.redis.aclose()
            await engine.dispose()
        return seen

    return job_id, asyncio.run(scenario())


def _assert_one_end(stack: Stack, job_id: str, seen: list[Event]) -> None:
    assert seen[-1].type == "status" and seen[-1].data["status"] == "succeeded", seen[-3:]
    results = [e for e in seen if e.type == "result"]
    assert len(results) == 1 and results[0].data["result"]["text"] == RESULT_TEXT
    assert visible_text(seen) == RESULT_TEXT
    kinds = [t for t, _ in stream_of(stack, job_id)]
    assert kinds.count("result") == 1 and kinds[-1] == "status" and kinds.count("status") == 3  # queued, running, succeeded


def test_a_retried_finish_publishes_the_end_the_failed_one_could_not(stack: Stack, client: JobClient) -> None:
    job_id, seen = _finish_with_redis_cut(stack, client, restore_before_client=True)
    _assert_one_end(stack, job_id, seen)


def test_a_client_sees_the_end_from_the_row_while_the_worker_cannot_publish_it(stack: Stack, client: JobClient) -> None:
    job_id, seen = _finish_with_redis_cut(stack, client, restore_before_client=False)
    _assert_one_end(stack, job_id, seen)


# ---------------------------------------------------------------- lost streams


def test_a_finished_job_whose_stream_was_lost_replays_its_whole_result(stack: Stack, client: JobClient) -> None:
    job, events = client.run(llm_job("Name three rivers.", max_tokens=24, seed=5))
    assert job["status"] == "succeeded" and job["result"]["text"]
    tokens = [e for e in events if e.type == "token"]
    # The loss: this job's stream only (as a flush of it, or a Redis restart without persistence).
    assert direct_redis(stack).delete(stream_key(job["id"])) == 1
    fresh = follow_within(client, job["id"], 30)
    assert [e.type for e in fresh][0] == "reset" and [e.type for e in fresh][-2:] == ["result", "status"]
    assert fresh[-1].data["status"] == "succeeded" and fresh[-2].data["result"]["text"] == job["result"]["text"]
    assert visible_text(fresh) == job["result"]["text"]
    # A client that had part of the stream before it was lost resumes from its last event: it drops
    # what it had (reset) and gets the whole answer, once.
    had = events[: events.index(tokens[len(tokens) // 2]) + 1]
    resumed = follow_within(client, job["id"], 30, last_event_id=had[-1].id)
    assert_whole(had + resumed, job["result"]["text"])


def test_a_running_job_that_lost_its_stream_resets_then_resends(stack: Stack, client: JobClient) -> None:
    job_id = client.submit(llm_job("Write a long letter about the mountains.", max_tokens=200, ignore_eos=True, seed=3))
    had: list[Event] = []
    stream = client.events(job_id)
    for e in stream:
        had.append(e)
        if e.type == "token" and e.data["index"] >= 20:
            break
    stream.close()
    assert direct_redis(stack).delete(stream_key(job_id)) == 1  # the loss, mid-stream
    assert client.get(job_id)["status"] == "running"  # ...of a job in flight
    resumed = follow_within(client, job_id, 60, last_event_id=had[-1].id)
    job = client.get(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    kinds = [e.type for e in resumed]
    assert "reset" in kinds and "token" not in kinds[: kinds.index("reset")]  # reset before any token
    assert resumed[kinds.index("reset")].data.get("reason") == "stream_lost"
    assert_whole(had + resumed, job["result"]["text"])
    after_reset = [e for e in resumed[kinds.index("reset"):] if e.type == "token"]
    assert len(after_reset) == job["usage"]["completion_tokens"] == 200  # no token missing, none twice

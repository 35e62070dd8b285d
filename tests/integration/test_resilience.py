"""Crashes and restarts lose nothing; priority overtakes a backlog."""

from __future__ import annotations

import time

from switchyard.devstack.client import Event, JobClient, llm_job, visible_text
from switchyard.devstack.stack import Stack


def _wait_tokens(events_iter, seen: list[Event], n: int) -> None:  # type: ignore[no-untyped-def]
    for e in events_iter:
        seen.append(e)
        if e.type == "token" and e.data["index"] >= n:
            return
    raise AssertionError("stream ended early")


def test_worker_sigkill_mid_job_then_restart_completes_the_job(stack: Stack, client: JobClient) -> None:
    job_id = client.submit(llm_job("Write a long poem about the sea.", max_tokens=300, ignore_eos=True, seed=11))
    seen: list[Event] = []
    stream = client.events(job_id)
    _wait_tokens(stream, seen, 20)
    stream.close()
    stack.procs["worker-llm"].kill()
    stack.procs["worker-llm"].start()
    stack.procs["worker-llm"].wait_ready()
    rest = list(client.events(job_id, last_event_id=seen[-1].id))
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2
    events = seen + rest
    assert {"status": "running", "attempt": 2} in [e.data for e in events if e.type == "status"]
    # Whatever the retry did (resumed in place, or reset and resent), the client's view is whole.
    assert visible_text(events) == job["result"]["text"]
    assert job["usage"]["completion_tokens"] == 300


def test_api_sigkill_mid_job_then_restart_resumes_every_token_once(stack: Stack, client: JobClient) -> None:
    job_id = client.submit(llm_job("Describe a busy railway station.", max_tokens=300, ignore_eos=True))
    seen: list[Event] = []
    stream = client.events(job_id)
    _wait_tokens(stream, seen, 10)
    api = stack.procs["api"]
    assert client.get(job_id)["status"] == "running"  # in flight, a client following it
    api.kill()  # kill -9, with the client's stream open
    assert not api.alive()
    stream.close()
    api.start()
    api.wait_ready()
    rest = list(client.events(job_id, last_event_id=seen[-1].id))
    job = client.get(job_id)
    assert job["status"] == "succeeded"
    events = seen + rest
    # Every token exactly once, in order: the resume started right after the last event seen.
    assert [e.data["index"] for e in events if e.type == "token"] == list(range(300))
    assert not [e for e in events if e.type == "reset"]
    assert visible_text(events) == job["result"]["text"]


def test_high_priority_overtakes_a_queued_low_priority_backlog(stack: Stack, gold_key: str) -> None:
    assert stack.cfg.worker_concurrency == 1, "this test needs a worker with one activity slot"
    client = JobClient(stack.ingress, key=gold_key)  # a key's tier caps priority: "high" needs a high-tier key
    blocker = client.submit(llm_job("Keep talking.", max_tokens=150, ignore_eos=True, priority="normal"))
    # Wait until the blocker holds the only slot, so everything after it queues.
    for e in client.events(blocker):
        if e.type == "token":
            break
    low = [client.submit(llm_job(f"Low job {i}", max_tokens=4, priority=5)) for i in range(5)]
    high = client.submit(llm_job("High job", max_tokens=4, priority="high"))
    for job_id in [blocker, *low, high]:
        list(client.events(job_id))
    started = {j: client.get(j)["started_at"] for j in [*low, high]}
    assert all(client.get(j)["status"] == "succeeded" for j in started)
    assert started[high] < min(started[j] for j in low), started
    assert client.get(high)["priority"] == 1 and client.get(low[0])["priority"] == 5


def test_one_tenants_backlog_does_not_starve_another_at_the_same_priority(stack: Stack) -> None:
    assert stack.cfg.worker_concurrency == 1, "this test needs a worker with one activity slot"
    busy, other = (JobClient(stack.ingress, key=stack.create_key(tenant)) for tenant in ("fair-busy", "fair-other"))
    blocker = busy.submit(llm_job("Keep talking.", max_tokens=150, ignore_eos=True))
    for e in busy.events(blocker):  # the blocker holds the only slot: everything after it queues
        if e.type == "token":
            break
    backlog = [busy.submit(llm_job(f"Busy job {i}", max_tokens=4)) for i in range(5)]
    late = other.submit(llm_job("The other tenant's job", max_tokens=4))
    assert busy.get(blocker)["status"] == "running" and other.get(late)["status"] == "queued"  # the fault: a saturated worker
    for client, job_id in [(busy, blocker), *((busy, j) for j in backlog), (other, late)]:
        list(client.events(job_id))
    started = sorted(busy.get(j)["started_at"] for j in backlog)
    assert all(busy.get(j)["status"] == "succeeded" for j in backlog) and other.get(late)["status"] == "succeeded"
    assert {busy.get(j)["priority"] for j in backlog} == {other.get(late)["priority"]}  # same priority level
    # Without fairness the late job runs after the whole backlog; with it, the two tenants take turns.
    assert other.get(late)["started_at"] < started[1], (other.get(late)["started_at"], started)


def test_temporal_sigkill_mid_workflow_then_restart_ends_the_job_once(stack: Stack, client: JobClient) -> None:
    job_id = client.submit(llm_job("Tell me about lighthouses.", max_tokens=120, ignore_eos=True, seed=9))
    seen: list[Event] = []
    stream = client.events(job_id)
    _wait_tokens(stream, seen, 5)
    stream.close()
    assert client.get(job_id)["status"] == "running"  # the workflow's activity is running
    temporal = stack.procs["temporal"]
    temporal.kill()  # kill -9 of the Temporal server mid-workflow
    assert not temporal.alive()
    time.sleep(1)
    temporal.start()
    temporal.wait_ready()
    rest = list(client.events(job_id, last_event_id=seen[-1].id, timeout=180))
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    events = seen + rest
    assert len([e for e in events if e.type == "result"]) == 1  # one result recorded and told
    assert [e.data["status"] for e in events if e.type == "status" and e.data["status"] in ("succeeded", "failed", "cancelled")] == ["succeeded"]
    assert visible_text(events) == job["result"]["text"] and job["usage"]["completion_tokens"] == 120


def test_job_accepted_while_temporal_is_down_runs_once_it_is_back(stack: Stack, client: JobClient) -> None:
    temporal = stack.procs["temporal"]
    temporal.kill()
    try:
        r = client.http.post("/v1/jobs", json=llm_job("Hello again.", max_tokens=8))
        # Accepted: the row is committed; the workflow start waits in the outbox.
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        time.sleep(2)
        assert client.get(job_id)["status"] == "queued"
    finally:
        temporal.start()
        temporal.wait_ready()
    events = list(client.events(job_id, timeout=120))
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert events[0].data == {"status": "queued"} and visible_text(events) == job["result"]["text"]


def test_cancel_before_the_workflow_starts(stack: Stack, client: JobClient) -> None:
    temporal = stack.procs["temporal"]
    temporal.kill()
    try:
        job_id = client.submit(llm_job("Never mind.", max_tokens=8))
        r = client.http.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
    finally:
        temporal.start()
        temporal.wait_ready()
    events = list(client.events(job_id, timeout=60))
    assert events[-1].data["status"] == "cancelled" and not [e for e in events if e.type == "token"]
    time.sleep(3)  # the sweeper must not resurrect it
    assert client.get(job_id)["status"] == "cancelled"

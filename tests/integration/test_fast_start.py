"""Fast start (docs/llm-speed.md): the API runs a completion's first attempt itself, at once; a run
that succeeds needs no workflow, a longer one gets one from the outbox's sweeper that adopts it (the
API killed mid-run: test_resilience.py)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from conftest import eventually, workflow_status  # pants: no-infer-dep
from temporalio.client import WorkflowExecutionStatus

from switchyard.devstack.client import JobClient, llm_job, visible_text
from switchyard.devstack.stack import Stack

LLM_MODEL = "smollm2-135m-instruct"


@contextmanager
def worker_stopped(stack: Stack) -> Iterator[Callable[[], None]]:
    """worker-llm frozen (SIGSTOP): it takes no task until the block ends or it is thawed."""
    worker = stack.procs["worker-llm"].popen
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)
    thawed = []

    def thaw() -> None:
        if not thawed:
            os.kill(worker.pid, signal.SIGCONT)
            thawed.append(True)

    try:
        yield thaw
    finally:
        thaw()


def _fast_starts(stack: Stack, outcome: str) -> float:
    """``switchyard_llm_fast_starts_total`` of the test model on the API's /metrics page."""
    page = httpx.get(f"http://127.0.0.1:{stack.cfg.api_metrics_port}/metrics", timeout=5).text
    m = re.search(rf'^switchyard_llm_fast_starts_total{{model="{LLM_MODEL}",outcome="{outcome}"}} (\S+)$', page, re.M)
    return float(m.group(1)) if m else 0.0


def _chat(stack: Stack, auth: dict[str, str], **extra: object) -> dict[str, object]:
    return {"model": LLM_MODEL, "messages": [{"role": "user", "content": "Tell me about trains."}], **extra}


def test_a_completion_runs_in_the_api_while_no_worker_takes_tasks_and_needs_no_workflow(stack: Stack, client: JobClient,
                                                                                         auth: dict[str, str]) -> None:
    before = _fast_starts(stack, "succeeded")
    with worker_stopped(stack):  # the fault: no worker can take a workflow or activity task
        r = httpx.post(stack.ingress + "/v1/chat/completions", json=_chat(stack, auth, max_tokens=12, seed=5), headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        job_id = r.headers["x-switchyard-job-id"]
        answer = r.json()["choices"][0]["message"]["content"]
        job = client.get(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["usage"]["completion_tokens"] == 12
        eventually(lambda: _fast_starts(stack, "succeeded") == before + 1, "the API's run counted as succeeded", 10)
    time.sleep(3.5)  # past the outbox's grace (2 s) and a sweep: an ended job is never dispatched
    assert workflow_status(stack, job_id) is None
    events = list(client.events(job_id))
    assert [e.data for e in events if e.type == "status"] == [{"status": "queued"}, {"status": "running", "attempt": 1}, {"status": "succeeded"}]
    assert visible_text(events) == answer == client.get(job_id)["result"]["text"]


def test_a_run_still_going_after_the_outbox_grace_gets_a_workflow_that_adopts_it(stack: Stack, client: JobClient,
                                                                                  auth: dict[str, str]) -> None:
    body = _chat(stack, auth, max_tokens=400, ignore_eos=True, seed=9, stream=True)
    with worker_stopped(stack) as thaw, httpx.stream("POST", stack.ingress + "/v1/chat/completions", json=body, headers=auth, timeout=120) as r:
        job_id = r.headers["x-switchyard-job-id"]
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # the API's run streams
        # The sweeper starts the running job's workflow after the grace; with the worker frozen it waits for a task.
        eventually(lambda: workflow_status(stack, job_id) == WorkflowExecutionStatus.RUNNING, "the sweeper dispatched the running job", 15)
        assert client.get(job_id)["status"] == "running"  # still the API's run (a long stream)
        thaw()  # the worker's activity finds the API's lease held and waits for its end record
        assert "data: [DONE]" in list(lines)
    eventually(lambda: workflow_status(stack, job_id) == WorkflowExecutionStatus.COMPLETED, "the workflow adopted the run's end", 60)
    job = client.get(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["usage"]["completion_tokens"] == 400  # no second generation
    events = list(client.events(job_id))
    assert [e.data["index"] for e in events if e.type == "token"] == list(range(400))


def test_deleting_a_run_the_api_started_ends_it_at_once_and_nothing_runs_it_later(stack: Stack, client: JobClient,
                                                                                    auth: dict[str, str]) -> None:
    body = _chat(stack, auth, max_tokens=400, ignore_eos=True, stream=True)
    before = _fast_starts(stack, "cancelled")
    with httpx.stream("POST", stack.ingress + "/v1/chat/completions", json=body, headers=auth, timeout=120) as r:
        job_id = r.headers["x-switchyard-job-id"]
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        eventually(lambda: client.get(job_id)["status"] == "running", "the run marked running", 10)  # its row's update trails its first token
        assert workflow_status(stack, job_id) is None  # the fault's target: in flight, the API's own run, no workflow yet
        d = httpx.delete(f"{stack.ingress}/v1/jobs/{job_id}", headers=auth, timeout=10)
        assert d.status_code == 202, d.text
        assert d.json()["status"] == "cancelled"
        list(lines)  # the stream ends (no hang)
    eventually(lambda: _fast_starts(stack, "cancelled") == before + 1, "the API's run stopped for the cancel", 10)
    time.sleep(3.5)  # past the grace and a sweep: no workflow takes the job up again
    job = client.get(job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 1, job
    tokens = [e for e in client.events(job_id) if e.type == "token"]
    assert 0 < len(tokens) < 400  # the engine stopped midway
    assert workflow_status(stack, job_id) in (None, WorkflowExecutionStatus.COMPLETED)  # started only to read the run's cancel record


def test_over_the_backlog_a_completion_waits_its_turn_in_the_queue(stack: Stack, client: JobClient, auth: dict[str, str]) -> None:
    body = _chat(stack, auth, max_tokens=4, stream=True)
    before = _fast_starts(stack, "queued")
    with worker_stopped(stack) as thaw:
        queued = [client.submit(llm_job(f"Queued job {i}", max_tokens=4)) for i in range(stack.cfg.worker_concurrency)]  # the API's fast-start limit
        with httpx.stream("POST", stack.ingress + "/v1/chat/completions", json=body, headers=auth, timeout=60) as r:
            job_id = r.headers["x-switchyard-job-id"]
            time.sleep(2.0)
            assert client.get(job_id)["status"] == "queued"  # not started by the API: the queue orders it by priority
            assert _fast_starts(stack, "queued") == before + 1
            thaw()  # the worker back: everything runs, the completion included
            assert "data: [DONE]" in list(r.iter_lines())
    for j in [*queued, job_id]:
        list(client.events(j))
        assert client.get(j)["status"] == "succeeded"
    assert client.get(job_id)["attempts"] == 1

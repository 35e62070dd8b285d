"""Fast start (docs/llm-speed.md): the API runs a completion's first attempt itself, at once; the
job's workflow, started as always, adopts the run (the API killed mid-run: test_resilience.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from conftest import eventually  # pants: no-infer-dep
from temporalio.client import Client, WorkflowExecutionStatus

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


def _workflow_status(stack: Stack, job_id: str) -> WorkflowExecutionStatus | None:
    async def describe() -> WorkflowExecutionStatus | None:
        client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}")
        return (await client.get_workflow_handle(job_id).describe()).status

    return asyncio.run(describe())


def _fast_starts(stack: Stack, outcome: str) -> float:
    """``switchyard_llm_fast_starts_total`` of the test model on the API's /metrics page."""
    page = httpx.get(f"http://127.0.0.1:{stack.cfg.api_metrics_port}/metrics", timeout=5).text
    m = re.search(rf'^switchyard_llm_fast_starts_total{{model="{LLM_MODEL}",outcome="{outcome}"}} (\S+)$', page, re.M)
    return float(m.group(1)) if m else 0.0


def _chat(stack: Stack, auth: dict[str, str], **extra: object) -> dict[str, object]:
    return {"model": LLM_MODEL, "messages": [{"role": "user", "content": "Tell me about trains."}], **extra}


def test_a_completion_runs_in_the_api_while_no_worker_takes_tasks_and_its_workflow_adopts_it(stack: Stack, client: JobClient,
                                                                                               auth: dict[str, str]) -> None:
    before = _fast_starts(stack, "succeeded")
    with worker_stopped(stack):  # the fault: no worker can take the job's workflow or activity tasks
        r = httpx.post(stack.ingress + "/v1/chat/completions", json=_chat(stack, auth, max_tokens=12, seed=5), headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        job_id = r.headers["x-switchyard-job-id"]
        answer = r.json()["choices"][0]["message"]["content"]
        job = client.get(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["usage"]["completion_tokens"] == 12
        assert _workflow_status(stack, job_id) == WorkflowExecutionStatus.RUNNING  # its workflow waits for a worker
        eventually(lambda: _fast_starts(stack, "succeeded") == before + 1, "the API's run counted as succeeded", 10)
    deadline = time.monotonic() + 60
    while _workflow_status(stack, job_id) != WorkflowExecutionStatus.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workflow_status(stack, job_id) == WorkflowExecutionStatus.COMPLETED  # adopted: no second generation
    events = list(client.events(job_id))
    assert [e.data for e in events if e.type == "status"] == [{"status": "queued"}, {"status": "running", "attempt": 1}, {"status": "succeeded"}]
    assert visible_text(events) == answer == client.get(job_id)["result"]["text"]


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

"""Job submission latency: ``POST /v1/jobs`` through Nginx vs the API direct vs Nginx's floor."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.stack import Stack
from switchyard_bench.stats import save, summarize, table

N = 300


def _timed(fn, n: int, workers: int = 1) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    def one(_: int) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    t0 = time.perf_counter()
    if workers == 1:
        ms = [one(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            ms = list(pool.map(one, range(n)))
    return ms, time.perf_counter() - t0


def run(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {stack.dev_key}"}
    edge = httpx.Client(base_url=stack.ingress, timeout=30, headers=auth)
    direct = httpx.Client(base_url=f"http://127.0.0.1:{stack.cfg.api_port}", timeout=30, headers=auth)
    body = llm_job("Say hi.", max_tokens=1)

    def post(c: httpx.Client) -> None:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text

    for _ in range(30):  # warm-up: connections, pools
        post(edge)
        post(direct)
    drain(stack)
    rows = []
    # Accepting a burst while every worker is busy elsewhere: the worker is paused (SIGSTOP), so
    # the jobs wait in Temporal's backlog and inference does not compete for this 2-core machine.
    worker = stack.procs["worker-llm"].popen
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        ms, s = _timed(lambda: edge.get("/healthz"), N)
        rows.append(summarize("GET /healthz via Nginx (floor)", ms, s))
        ms, s = _timed(lambda: post(direct), N)
        rows.append(summarize("POST /v1/jobs, API direct", ms, s))
        ms, s = _timed(lambda: post(edge), N)
        rows.append(summarize("POST /v1/jobs via Nginx", ms, s, baseline="POST /v1/jobs, API direct"))
        ms, s = _timed(lambda: post(edge), N, workers=8)
        rows.append(summarize("POST /v1/jobs via Nginx, 8 concurrent", ms, s, baseline="POST /v1/jobs via Nginx"))
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # The same while the worker and engine drain that backlog on the same two cores.
    ms, s = _timed(lambda: post(edge), N // 2)
    rows.append(summarize("POST /v1/jobs via Nginx, worker draining", ms, s, baseline="POST /v1/jobs via Nginx"))
    print("\nJob submission (202 once the row is committed in PostgreSQL; the workflow starts right after, off the request path)")
    print(table(rows))
    out = save("job_submit", rows, {"target": "POST /v1/jobs p99 <= 20 ms via Nginx", "requests_each": N})
    print(f"results: {out}")
    drain(stack)


def drain(stack: Stack) -> None:
    """Wait until the jobs queued so far have run (a low-priority job goes last)."""
    client = JobClient(stack.ingress, key=stack.dev_key)
    for _ in client.events(client.submit(llm_job("Say bye.", max_tokens=1, priority="low")), timeout=900):
        pass

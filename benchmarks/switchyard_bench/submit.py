"""Job submission latency: ``POST /v1/jobs`` through Nginx vs the API direct vs Nginx's floor."""

from __future__ import annotations

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
    edge = httpx.Client(base_url=stack.ingress, timeout=30)
    direct = httpx.Client(base_url=f"http://127.0.0.1:{stack.cfg.api_port}", timeout=30)
    body = llm_job("Say hi.", max_tokens=1)

    def post(c: httpx.Client) -> None:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text

    for _ in range(30):  # warm-up: connections, pools, JIT-free paths
        post(edge)
        post(direct)
    rows = []
    ms, s = _timed(lambda: edge.get("/healthz"), N)
    rows.append(summarize("GET /healthz via Nginx (floor)", ms, s))
    ms, s = _timed(lambda: post(direct), N)
    rows.append(summarize("POST /v1/jobs, API direct", ms, s))
    ms, s = _timed(lambda: post(edge), N)
    rows.append(summarize("POST /v1/jobs via Nginx", ms, s, baseline="POST /v1/jobs, API direct"))
    ms, s = _timed(lambda: post(edge), N, workers=8)
    rows.append(summarize("POST /v1/jobs via Nginx, 8 concurrent", ms, s, baseline="POST /v1/jobs via Nginx"))
    print("\nJob submission (202 answered after the row is in PostgreSQL and the workflow is started)")
    print(table(rows))
    out = save("job_submit", rows, {"target": "POST /v1/jobs p99 <= 20 ms via Nginx", "requests_each": N})
    print(f"results: {out}")
    # Let the queued jobs drain so later benchmarks start from an idle worker.
    last = JobClient(stack.ingress).submit(llm_job("Say bye.", max_tokens=1, priority="low"))
    for _ in JobClient(stack.ingress).events(last, timeout=600):
        pass

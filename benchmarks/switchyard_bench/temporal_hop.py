"""Temporal's own share of a job's start (issue 14's per-hop breakdown): from ``start_workflow`` to
the first activity's start, on the dev server the local platform runs (same dynamic config), with a
one-activity workflow in this process: no payload codec, no database, no engine.

Variants, interleaved in rounds (medians of each round's requests, then the median over rounds):
the workflow sandbox on and off (``UnsandboxedWorkflowRunner``), and the worker asking for eager
activity execution or not (the server allows it). The gap between this hop and the request log's
``queue_ms`` (accepted → attempt start) is the platform's own accept path: the job row's
transaction, the outbox's start, the payload codec, the worker's bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
import uuid
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner

from switchyard.devstack.procs import free_port
from switchyard.devstack.stack import find_temporal
from switchyard_bench.stats import RESULTS, cpu_model, pct
from switchyard_bench.temporal_hop_wf import HopProbe

ROUNDS = 10
PER_ROUND = 20
# The local platform's dev-server settings (switchyard.devstack.stack), eager activities included.
DYNAMIC_CONFIG = ("history.transferProcessorMaxPollRPS=1000", 'history.timerProcessorMaxTimeShift="50ms"',
                  "matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1", "system.enableActivityEagerExecution=true")


@activity.defn(name="hop.started")
async def started(t0: float) -> float:
    return (time.time() - t0) * 1000


async def _variant(client: Client, runner: WorkflowRunner | None, eager: bool, n: int) -> list[float]:
    tq = f"hop-{uuid.uuid4().hex[:8]}"
    kw: dict[str, Any] = {} if runner is None else {"workflow_runner": runner}
    async with Worker(client, task_queue=tq, workflows=[HopProbe], activities=[started], disable_eager_activity_execution=not eager, **kw):
        await (await client.start_workflow("HopProbe", time.time(), id=f"hop-{uuid.uuid4().hex}", task_queue=tq)).result()  # warm-up
        out = []
        for _ in range(n):
            handle = await client.start_workflow("HopProbe", time.time(), id=f"hop-{uuid.uuid4().hex}", task_queue=tq)
            out.append(float(await handle.result()))
        return out


async def _measure(port: int) -> dict[str, list[float]]:
    deadline = time.monotonic() + 60
    while True:
        try:
            client = await Client.connect(f"127.0.0.1:{port}")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    variants: dict[str, tuple[WorkflowRunner | None, bool]] = {
        "sandboxed, eager": (None, True), "sandboxed, not eager": (None, False),
        "unsandboxed, eager": (UnsandboxedWorkflowRunner(), True), "unsandboxed, not eager": (UnsandboxedWorkflowRunner(), False)}
    ms: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, (runner, eager) in variants.items():
            ms[name] += await _variant(client, runner, eager, PER_ROUND)
    return ms


def run() -> None:
    cpu = cpu_model()
    port = free_port()
    cmd = [find_temporal(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless", "--log-level", "error",
           "--http-port", str(free_port()), "--metrics-port", str(free_port())]
    for value in DYNAMIC_CONFIG:
        cmd += ["--dynamic-config-value", value]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ms = asyncio.run(_measure(port))
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = [{"variant": name, "n": len(v), "p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(v, 99), 2)} for name, v in ms.items()]
    lines = [f"Host CPU: {cpu}", "", "| start_workflow → first activity start | n | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['n']} | {r['p50_ms']} | {r['p99_ms']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    meta = {"bench": "temporal_hop", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu, "rounds": ROUNDS, "per_round": PER_ROUND,
            "dynamic_config": DYNAMIC_CONFIG}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "temporal_hop.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "temporal_hop.md").write_text(f"# temporal_hop\n\n{json.dumps(meta, indent=2)}\n\n{text}\n")

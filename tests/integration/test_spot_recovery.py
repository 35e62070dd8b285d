"""Spot recovery: a worker that drains (SIGTERM, or a spot interruption notice read from a loopback
STAND-IN for the cloud metadata service, switchyard.devstack.imds_standin) hands its in-flight LLM
attempt back at once; another real worker-llm process resumes it, and the client following the
stream sees every token exactly once. Prints the hand-over time (drain start -> first token of the
next attempt, on the server's clocks). A draining vision worker hands its batch back with the
checkpoint of its last finished chunk."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import freeze_at_first_progress, thaw  # pants: no-infer-dep
from temporalio.client import Client

from switchyard.common.temporal import HEARTBEAT_TIMEOUT
from switchyard.devstack.client import Event, JobClient, llm_job, visible_text
from switchyard.devstack.imds_standin import ImdsStandIn
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import Proc
from switchyard.devstack.stack import Stack

TOKENS = 300
DRAIN_AT = 20  # the token index at which the holder is drained


def _worker(stack: Stack, name: str, imds: ImdsStandIn | None) -> Proc:
    """Another worker-llm process on the stack's task queue (its metrics pages off)."""
    base = stack.procs["worker-llm"]
    env = {**base.env, "SWITCHYARD_METRICS_PORT": "0", "SWITCHYARD_TEMPORAL_METRICS_PORT": "0"}
    if imds is not None:
        env.update(SWITCHYARD_SPOT_METADATA_URL=imds.url, SWITCHYARD_SPOT_POLL_INTERVAL_S="0.2")
    p = Proc(name, list(base.cmd), env, base.log_path.with_name(f"{name}.log"), lambda: False)
    p.ready = p.log_contains("worker started")
    return p


def _holder_pid(stack: Stack, job_id: str) -> tuple[int, int]:
    """(pid of the worker running the job's generation, attempt), from Temporal's pending activities."""
    async def describe() -> tuple[int, int]:
        client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}")
        d = await client.get_workflow_handle(job_id).describe()
        [pa] = [a for a in d.raw_description.pending_activities if a.activity_type.name == "llm.generate"]
        return int(pa.last_worker_identity.split("@")[0]), pa.attempt

    return asyncio.run(describe())


def _log_line(p: Proc, msg: str) -> dict[str, Any]:
    """The last JSON log line of ``p``'s current run whose message starts with ``msg``."""
    with open(p.log_path, "rb") as f:
        f.seek(p.log_offset)
        text = f.read().decode(errors="replace")
    found = [line for line in map(_json_or_none, text.splitlines()) if line is not None and str(line.get("msg", "")).startswith(msg)]
    assert found, f"{p.name} never logged {msg!r}:\n{p.tail()}"
    return found[-1]


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        out = json.loads(line)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def _run_and_drain(stack: Stack, client: JobClient, workers: list[Proc], drain: dict[int, ImdsStandIn | signal.Signals], seed: int) -> tuple[Proc, float]:
    """Submit a long job, follow its stream; at token DRAIN_AT drain the worker holding it
    (``drain[pid]``: a signal, or the stand-in that gets the notice). Returns the drained worker and
    the hand-over time in seconds."""
    job_id = client.submit(llm_job("Write a long poem about the sea.", max_tokens=TOKENS, ignore_eos=True, seed=seed))
    events: list[Event] = []
    holder: Proc | None = None
    for e in client.events(job_id):
        events.append(e)
        if holder is None and e.type == "token" and e.data["index"] >= DRAIN_AT:
            pid, attempt = _holder_pid(stack, job_id)
            assert attempt == 1  # in flight, first attempt
            [holder] = [w for w in workers if w.popen is not None and w.popen.pid == pid]
            how = drain[pid]
            if isinstance(how, ImdsStandIn):
                how.interrupt("terminate")
            else:
                holder.signal(how)
    assert holder is not None and holder.popen is not None
    assert holder.popen.wait(10) == 0  # the drained worker exited, cleanly
    started, finished = _log_line(holder, "drain started"), _log_line(holder, "drain finished")
    assert finished["handed_back"] == 1, finished

    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2, job
    statuses = [e.data for e in events if e.type == "status"]
    assert {"status": "running", "attempt": 2} in statuses
    # Every token exactly once, in order, with no gap; the only repeats allowed are those after a
    # `reset` (a retry whose regeneration diverged starts over: docs/architecture.md).
    runs: list[list[int]] = [[]]
    for e in events:
        if e.type == "reset":
            runs.append([])
        elif e.type == "token":
            runs[-1].append(e.data["index"])
    assert all(run == list(range(len(run))) for run in runs), runs
    assert len(runs[-1]) == TOKENS
    assert visible_text(events) == job["result"]["text"]
    assert job["usage"]["completion_tokens"] == TOKENS
    # Hand-over: the drain's start (drained worker's log) -> the next attempt's first token (its
    # Redis stream id is the time it was published, in ms).
    at = next(i for i, e in enumerate(events) if e.type == "status" and e.data.get("attempt") == 2)
    first = next(e for e in events[at:] if e.type == "token")
    handover = int(first.id.split("-")[0]) / 1000 - float(started["ts"])
    print(f"\nspot recovery ({started['reason']}): hand-over {handover:.2f} s (drain start -> first token of attempt 2, token {first.data['index']}, resets {len(runs) - 1})")
    assert 0 < handover < HEARTBEAT_TIMEOUT.total_seconds(), handover  # never waited for a heartbeat timeout
    return holder, handover


@pytest.fixture
def imds() -> Iterator[tuple[ImdsStandIn, ImdsStandIn]]:
    a, b = ImdsStandIn().start(), ImdsStandIn().start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_a_draining_worker_hands_its_llm_job_to_another_without_gap_or_duplicate(stack: Stack, client: JobClient,
                                                                               imds: tuple[ImdsStandIn, ImdsStandIn]) -> None:
    main = stack.procs["worker-llm"]
    a, b = _worker(stack, "worker-llm-spot-a", imds[0]), _worker(stack, "worker-llm-spot-b", imds[1])
    try:
        # Only A and B (both polling their metadata stand-in) take the first job: the stack's worker steps aside.
        main.stop()
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        assert a.popen is not None and b.popen is not None
        # (b) A spot interruption notice on the holder's metadata service.
        drained, _ = _run_and_drain(stack, client, [a, b], {a.popen.pid: imds[0], b.popen.pid: imds[1]}, seed=21)
        assert _log_line(drained, "drain started")["reason"].startswith("spot interruption: terminate at ")
        survivor = b if drained is a else a
        # (a) SIGTERM, between the survivor and the stack's worker (back for the rest of the suite).
        main.start()
        main.wait_ready()
        assert survivor.popen is not None and main.popen is not None
        drained, _ = _run_and_drain(stack, client, [survivor, main], {survivor.popen.pid: signal.SIGTERM, main.popen.pid: signal.SIGTERM}, seed=22)
        assert _log_line(drained, "drain started")["reason"] == "SIGTERM"
    finally:
        a.stop()
        b.stop()
        if not main.alive():
            main.start()
            main.wait_ready()


def test_a_draining_vision_worker_hands_its_batch_back_with_its_checkpoint(stack: Stack, client: JobClient) -> None:
    """32 images in chunks of 8. After the first chunk Triton is frozen (the attempt hangs inside its
    second chunk) and the worker gets SIGTERM at once: it hands the attempt back within the drain,
    with the checkpoint of the chunk it had just finished (its last periodic heartbeat may predate
    it); restarted, the worker resumes after that chunk instead of starting over."""
    imgs = sample_images()
    triton, worker = stack.procs["triton"], stack.procs["worker-vision"]
    assert triton.popen is not None and worker.popen is not None
    job_id = client.submit({"domain": "vision", "model": "vision-classify",
                            "input": {"images": [base64.b64encode(i).decode() for i in [imgs["china"], imgs["flower"]] * 16], "top_k": 3}})
    events = client.events(job_id)
    seen = freeze_at_first_progress(events, triton)
    try:
        worker.signal(signal.SIGTERM)
        # The drain ends while Triton is still frozen (the attempt does not wait for its chunk)...
        deadline = time.monotonic() + 10
        while not worker.log_contains("drain finished")():
            assert time.monotonic() < deadline and worker.alive(), worker.tail()
            time.sleep(0.1)
    finally:
        thaw(triton)
    finished = _log_line(worker, "drain finished")
    assert finished["handed_back"] == 1, finished
    assert finished["duration_s"] < 5, finished  # not the 5 s grace period
    assert worker.popen.wait(15) == 0  # ...then the process closes its Triton clients and exits
    worker.start()
    worker.wait_ready()
    seen += list(events)
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert [p[0]["label"] for p in job["result"]["predictions"]] == ["palace", "daisy"] * 16
    retry_at = next(i for i, e in enumerate(seen) if e.type == "status" and e.data.get("attempt") == 2)
    done_before = max(e.data["done"] for e in seen[:retry_at] if e.type == "progress")
    first_after = next(e.data["done"] for e in seen[retry_at:] if e.type == "progress")
    assert first_after == done_before + 8, (done_before, first_after)  # resumed from the drain's checkpoint

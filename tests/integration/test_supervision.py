"""The supervision that `./switchyard up` runs, turned on over the test stack: a part killed with
SIGKILL is restarted by it, and what depended on that part carries on — a client following a job's
stream through Nginx resumes with Last-Event-ID after an API crash and sees every event exactly once;
a job running on a crashed worker finishes on the restarted one; Triton comes back, none of its
crashed run's processes left, and the ingress classifies through it again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import eventually  # pants: no-infer-dep (a test util beside this file)
from tritonclient.utils import InferenceServerException

from switchyard.devstack.client import Event, JobClient, llm_job, visible_text
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import Proc, http_ready
from switchyard.devstack.stack import Stack
from switchyard.devstack.supervisor import State, Supervisor


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _crash(proc: Proc) -> int:
    """``kill -9`` of the part's process (not its group: a crash, not a stop); its pid, once dead."""
    assert proc.popen is not None and proc.alive()
    pid = proc.popen.pid
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: _dead(pid), f"pid {pid} to die", 10)
    return pid


def _back(sup: Supervisor, name: str, old_pid: int, timeout_s: float = 60) -> int:
    """The supervisor restarted ``name`` as a new process and it is ready; its new pid."""
    eventually(lambda: sup.state(name) is State.UP and sup.pids(name)[-1] != old_pid, f"{name} restarted and ready", timeout_s)
    assert sup.pids(name)[-2:] == [old_pid, sup.pids(name)[-1]]
    return sup.pids(name)[-1]


@pytest.fixture
def supervised(stack: Stack) -> Iterator[Supervisor]:
    """Supervision on for one test; every part up again when it ends (later tests need the stack whole)."""
    with stack.supervisor().in_background() as sup:
        yield sup
        eventually(sup.settled, "every part up again", 60)


def test_api_sigkill_is_restarted_and_a_client_resumes_its_stream_with_every_event_once(
        stack: Stack, client: JobClient, supervised: Supervisor) -> None:
    n = 300
    job_id = client.submit(llm_job("Describe a night train crossing the mountains.", max_tokens=n, ignore_eos=True, seed=3))
    seen: list[Event] = []
    stream = client.events(job_id)
    for e in stream:
        seen.append(e)
        if e.type == "token" and e.data["index"] >= 10:
            break
    # The fault takes hold: the API serving this stream dies; Nginx cuts the stream off mid-body.
    old_pid = _crash(stack.procs["api"])
    with pytest.raises(httpx.TransportError):
        for e in stream:
            seen.append(e)
    before_crash = len(seen)
    # The client resumes as documented: reconnect with Last-Event-ID, honouring Retry-After while the
    # API is down (Nginx answers 503 in the platform's error shape).
    unavailable = 0
    t0 = time.monotonic()
    while True:
        assert time.monotonic() - t0 < 90, "the stream never resumed"
        try:
            for e in client.events(job_id, last_event_id=seen[-1].id):
                seen.append(e)
            break
        except httpx.HTTPStatusError as exc:  # its body is gone with the stream: the shape is checked below
            assert exc.response.status_code == 503 and exc.response.headers["Retry-After"] == "1", exc.response.status_code
            unavailable += 1
            down = client.http.get(f"/v1/jobs/{job_id}")
            assert down.status_code == 200 or down.json()["error"]["code"] == "upstream_unavailable", down.text
            time.sleep(float(exc.response.headers["Retry-After"]))
    new_pid = _back(supervised, "api", old_pid)
    assert unavailable >= 1  # it did reconnect while the API was down (the supervisor's first delay is 1 s)
    assert http_ready(f"http://127.0.0.1:{stack.cfg.api_port}/healthz")()
    assert Path(f"/proc/{new_pid}").exists()
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    # Every event exactly once, in order, up to the terminal one.
    ids = [tuple(int(x) for x in e.id.split("-")) for e in seen]
    assert ids == sorted(set(ids)), "an event was repeated or out of order"
    assert [e.data["index"] for e in seen if e.type == "token"] == list(range(n))
    assert not [e for e in seen if e.type == "reset"]
    assert [e.data for e in seen if e.type == "status"] == [{"status": "queued"}, {"status": "running", "attempt": 1}, {"status": "succeeded"}]
    assert [e.type for e in seen].count("result") == 1 and seen[-1].type == "status" and seen[-1].data["status"] == "succeeded"
    assert visible_text(seen) == job["result"]["text"]
    assert before_crash < len(seen)


def test_worker_sigkill_is_restarted_and_the_job_it_was_running_finishes(stack: Stack, client: JobClient, supervised: Supervisor) -> None:
    n = 150
    job_id = client.submit(llm_job("Write a long poem about a lighthouse keeper.", max_tokens=n, ignore_eos=True, seed=13))
    seen: list[Event] = []
    stream = client.events(job_id)
    for e in stream:  # the job is running on the worker, mid-stream
        seen.append(e)
        if e.type == "token" and e.data["index"] >= 10:
            break
    stream.close()
    old_pid = _crash(stack.procs["worker-llm"])
    assert client.get(job_id)["status"] == "running"  # not finished: the worker died under it
    _back(supervised, "worker-llm", old_pid)
    rest = list(client.events(job_id, last_event_id=seen[-1].id))
    job = client.get(job_id)
    assert job["status"] == "succeeded" and job["attempts"] >= 2, job
    events = seen + rest
    assert {"status": "running", "attempt": 2} in [e.data for e in events if e.type == "status"]
    assert visible_text(events) == job["result"]["text"] and job["usage"]["completion_tokens"] == n


def test_triton_sigkill_is_restarted_with_its_process_group_and_the_ingress_classifies_again(
        stack: Stack, auth: dict[str, str], supervised: Supervisor) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object), binary_data=True)

    def classify() -> str:
        return str(client.infer("vision-classify", [image], headers=dict(auth)).as_numpy("labels")[0][0].decode())

    try:
        assert classify() == "palace"
        triton = stack.procs["triton"]
        assert triton.popen is not None
        group = triton.popen.pid  # its own process group: tritonserver and its Python-backend stubs
        old_pid = _crash(triton)
        with pytest.raises(InferenceServerException):  # the fault took hold: the Triton-backed model fails
            classify()
        _back(supervised, "triton", old_pid, timeout_s=120)
        # Nothing of the crashed run is left: the supervisor reaped its whole group before restarting.
        assert not [p for p in Path("/proc").glob("[0-9]*/stat") if _pgid(p) == group]

        def answers() -> bool:
            try:
                return classify() == "palace"
            except InferenceServerException:  # the worker's breaker may still be open for a moment
                return False

        eventually(answers, "the ingress to classify again through the restarted Triton", 60)
    finally:
        client.close()


def _pgid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None

"""Out of memory on the vision lane, on the real stack (Temporal, worker-vision, Triton): a **fault
injector** in front of Triton (triton_fault.py) answers inference requests over a batch size with
the 500 that Triton's onnxruntime backend sends when its arena cannot allocate; everything else
reaches the real Triton. A test first shows the fault took hold (the injector's counts), then what
the platform did: the job's chunk is split in halves until it fits, the smaller size is kept, and
a chunk that does not fit even alone is retried by Temporal (backoff) at that size until it does."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from triton_fault import TritonFaultInjector, vision_worker_behind  # pants: no-infer-dep

from switchyard.devstack.client import JobClient
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack

TRITON_MODEL = "efficientnet_lite0"  # vision-classify's backend (effnet-fp32-triton)
CHUNK = 8  # the worker's SWITCHYARD_VISION_JOB_CHUNK default


@pytest.fixture(scope="module")
def injector(stack: Stack) -> Iterator[TritonFaultInjector]:
    inj = TritonFaultInjector(stack.cfg.triton_http_port).start()
    try:
        with vision_worker_behind(stack, inj):
            yield inj
    finally:
        inj.stop()


def job(client: JobClient, n: int) -> str:
    imgs = sample_images()
    images = [base64.b64encode(i).decode() for i in [imgs["china"], imgs["flower"]] * (n // 2)]
    return client.submit({"domain": "vision", "model": "vision-classify", "input": {"images": images, "top_k": 3}})


def batches(inj: TritonFaultInjector) -> list[tuple[int, str, int]]:
    """(batch, outcome, count) of the requests to vision-classify's Triton model, largest batch first."""
    return sorted(((b, what, n) for (m, b, what), n in inj.counts.items() if m == TRITON_MODEL), reverse=True)


def test_a_chunk_out_of_memory_is_split_until_it_fits_and_the_job_succeeds(client: JobClient, stack: Stack, injector: TritonFaultInjector) -> None:
    injector.clear()
    injector.oom_above[TRITON_MODEL] = 2
    job_id = job(client, 2 * CHUNK)
    events = list(client.events(job_id))
    done = client.get(job_id)
    # The fault took hold: the first chunk of 8, then of 4, got Triton's OOM answer...
    assert batches(injector) == [(8, "oom", 1), (4, "oom", 1), (2, "passed", 8)], injector.counts
    # ...and the job succeeded in its first attempt, in chunks of 2 from then on.
    assert done["status"] == "succeeded", done
    assert [p[0]["label"] for p in done["result"]["predictions"]] == ["palace", "daisy"] * CHUNK
    assert [e.data["done"] for e in events if e.type == "progress"] == list(range(2, 2 * CHUNK + 1, 2))
    assert max(e.data.get("attempt", 1) for e in events if e.type == "status") == 1
    assert stack.procs["worker-vision"].log_contains("out of memory for a chunk of 4: chunks of 2 from now on")()


def test_an_item_out_of_memory_alone_is_retried_with_backoff_at_batch_one_until_it_fits(client: JobClient, injector: TritonFaultInjector) -> None:
    injector.clear()
    injector.oom_above[TRITON_MODEL] = 0  # nothing fits, not even one image
    job_id = job(client, 4)
    deadline = time.monotonic() + 60
    while sum(n for b, what, n in batches(injector) if (b, what) == (1, "oom")) < 3:  # three attempts failed at batch 1
        assert time.monotonic() < deadline, injector.counts
        time.sleep(0.2)
    assert client.get(job_id)["status"] == "running"
    injector.oom_above.clear()  # memory freed: the next attempt fits
    events = list(client.events(job_id))
    done = client.get(job_id)
    assert done["status"] == "succeeded", done
    assert [p[0]["label"] for p in done["result"]["predictions"]] == ["palace", "daisy"] * 2
    attempts = [e.data["attempt"] for e in events if e.type == "status" and "attempt" in e.data]
    assert max(attempts) >= 4, attempts
    # The first attempt halved 4 -> 2 -> 1; every later one started at the batch size kept in its heartbeat.
    got = batches(injector)
    assert [(b, what) for b, what, _ in got if b > 1] == [(4, "oom"), (2, "oom")], got
    assert dict(((b, what), n) for b, what, n in got)[(1, "passed")] == 4, got

"""Vision in the durable lane: POST /v1/jobs with domain "vision" runs a VisionJob workflow on the
vision worker, with progress events, on the same V2 models (ensembles included) as the realtime lane."""

from __future__ import annotations

import base64
import time

import pytest
from conftest import freeze_at_first_progress, thaw  # pants: no-infer-dep

from switchyard.devstack.client import JobClient
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack


def vision_job(images: list[bytes], model: str = "vision-classify", top_k: int = 3) -> dict[str, object]:
    return {"domain": "vision", "model": model, "input": {"images": [base64.b64encode(i).decode() for i in images], "top_k": top_k}}


@pytest.mark.parametrize("model", ["vision-classify", "vision-classify-fp32-int8"])
def test_batch_job_classifies_every_image_with_progress(client: JobClient, model: str) -> None:
    imgs = sample_images()
    batch = [imgs["china"], imgs["flower"]] * 5  # 10 images: two chunks of at most 8
    job, events = client.run(vision_job(batch, model))
    assert job["status"] == "succeeded", job
    preds = job["result"]["predictions"]
    assert [p[0]["label"] for p in preds] == ["palace", "daisy"] * 5
    assert all(len(p) == 3 and p[0]["score"] >= p[1]["score"] >= p[2]["score"] for p in preds)
    progress = [e.data for e in events if e.type == "progress"]
    assert progress == [{"done": 8, "total": 10}, {"done": 10, "total": 10}]
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    assert any(e.type == "result" for e in events)


def test_undecodable_image_fails_the_job_without_retries(client: JobClient) -> None:
    job, events = client.run(vision_job([b"this is not a jpeg"]))
    assert job["status"] == "failed" and job["error"]["type"] == "InvalidInput", job
    assert "could not be decoded" in job["error"]["message"]
    assert [e.data.get("attempt") for e in events if e.type == "status" and e.data["status"] == "running"] == [1]


def test_bad_vision_jobs_are_refused_at_submission(client: JobClient) -> None:
    china = base64.b64encode(sample_images()["china"]).decode()
    cases = [
        ({"domain": "vision", "model": "efficientnet-lite0", "input": {"images": [china]}}, 404, "model_not_found"),  # not an image classifier
        ({"domain": "vision", "model": "no-such-model", "input": {"images": [china]}}, 404, "model_not_found"),
        ({"domain": "vision", "model": "vision-classify", "input": {"images": ["@@@not base64@@@"]}}, 422, "validation_error"),
        ({"domain": "vision", "model": "vision-classify", "input": {"images": []}}, 422, "validation_error"),
        ({"domain": "vision", "model": "vision-classify", "input": {"images": [china], "top_k": 0}}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        r = client.http.post("/v1/jobs", json=body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body["model"], r.text)


def test_worker_killed_mid_job_resumes_from_its_checkpoint(stack: Stack, client: JobClient) -> None:
    """32 images in chunks of 8. After the first chunk Triton is frozen (the worker hangs inside a
    chunk, still heartbeating its checkpoint), then the worker is SIGKILLed and restarted: the retry
    resumes after the chunks already done instead of starting over, and every image is classified."""
    imgs = sample_images()
    triton, worker = stack.procs["triton"], stack.procs["worker-vision"]
    assert triton.popen is not None
    job_id = client.submit(vision_job([imgs["china"], imgs["flower"]] * 16))
    events = client.events(job_id)
    seen = freeze_at_first_progress(events, triton)
    try:
        time.sleep(2.5)  # at least one heartbeat carries the checkpoint
        worker.kill()
    finally:
        thaw(triton)
    worker.start()
    worker.wait_ready()
    seen += list(events)
    job = client.get(job_id)
    assert job["status"] == "succeeded", job
    assert [p[0]["label"] for p in job["result"]["predictions"]] == ["palace", "daisy"] * 16
    attempts = [e.data.get("attempt") for e in seen if e.type == "status" and e.data["status"] == "running"]
    assert attempts == [1, 2], attempts
    retry_at = next(i for i, e in enumerate(seen) if e.type == "status" and e.data.get("attempt") == 2)
    done_before = max(e.data["done"] for e in seen[:retry_at] if e.type == "progress")
    first_after = next(e.data["done"] for e in seen[retry_at:] if e.type == "progress")
    assert first_after == done_before + 8, (done_before, first_after)  # resumed, not restarted
    assert seen[-1].type == "status" and seen[-1].data["status"] == "succeeded"

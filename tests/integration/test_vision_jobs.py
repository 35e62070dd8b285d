"""Vision in the durable lane: POST /v1/jobs with domain "vision" runs a VisionJob workflow on the
vision worker, with progress events, on the same V2 models (ensembles included) as the realtime lane."""

from __future__ import annotations

import base64

import pytest

from switchyard.devstack.client import JobClient
from switchyard.devstack.models import sample_images


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

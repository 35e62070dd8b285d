"""Canary and promotion against the real stack (docs/shadow.md, "Canary and promotion"): a canary at
half the traffic answers about half the requests from the int8 candidate (V2 REST with the
``X-Switchyard-Served-By`` header, gRPC, the request log); a canary whose p99 passes its threshold
is rolled back automatically (the change row, weight 0, all traffic back on the primary), and so is
one whose candidate fails (a fault injector in front of Triton, triton_fault.py, fails the int8
model's inferences with Triton's own error answer); a
promotion that the vision worker applies (it answers with the candidate's network under the
model's name), then a manual rollback, with who/when/why in ``GET /v1/shadow/{model}/changes``;
the routes' 401/403/404/409/422. The models are copies of vision-classify (conftest.py)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import CANARIED, eventually  # pants: no-infer-dep
from triton_fault import TritonFaultInjector, vision_worker_behind  # pants: no-infer-dep

from switchyard.devstack.keys import DEV_TENANT
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack

CANDIDATE = "vision-classify-int8"
CANDIDATE_TRITON_MODEL = "efficientnet_lite0_int8"
SERVED_BY = "x-switchyard-served-by"


def infer(base: str, model: str, headers: dict[str, str], image: bytes) -> tuple[httpx.Response, np.ndarray[Any, Any] | None]:
    """One V2 REST inference (binary tensor extension, as tritonclient sends it): the response and its scores."""
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [inp], outputs=[httpclient.InferRequestedOutput("scores", binary_data=False), httpclient.InferRequestedOutput("labels", binary_data=False)])
    r = httpx.post(f"{base}/v2/models/{model}/infer", content=body, timeout=60,
                   headers={**headers, "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)})
    if r.status_code != 200:
        return r, None
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    return r, np.asarray(outputs["scores"]["data"], dtype=np.float32)


def changes(admin: httpx.Client, model: str) -> dict[str, Any]:
    r = admin.get(f"/v1/shadow/{model}/changes")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_canary_answers_its_share_from_the_candidate(stack: Stack, auth: dict[str, str], api_key: str) -> None:
    model, image = CANARIED["split"], sample_images()["flower"]
    served: list[str] = []
    for _ in range(40):
        r, scores = infer(stack.ingress, model, auth, image)
        assert r.status_code == 200 and scores is not None, r.text
        by = r.headers.get(SERVED_BY)
        # The answer names the model that computed it: the candidate's in its body as in the header.
        assert r.json()["model_name"] == (by or model), (by, r.json()["model_name"])
        served.append(by or model)
    n = served.count(CANDIDATE)
    # Binomial(40, 0.5): 20 +- 3.2; 8..32 is beyond 3.7 sd either side.
    assert 8 <= n <= 32 and served.count(model) == 40 - n, served
    # gRPC: the request is readdressed to the candidate, whose answer names it.
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    try:
        names = []
        for _ in range(20):
            ginp = grpcclient.InferInput("image", [1], "BYTES")
            ginp.set_data_from_numpy(np.array([image], dtype=object))
            names.append(grpc.infer(model, [ginp], headers={"authorization": f"Bearer {api_key}"}).get_response().model_name)
    finally:
        grpc.close()
    # Binomial(20, 0.5): both answer (all 20 from one side: p = 2e-6).
    assert set(names) == {model, CANDIDATE}, names


def test_a_canary_over_its_p99_threshold_is_rolled_back_automatically(stack: Stack, auth: dict[str, str], admin: httpx.Client) -> None:
    model, image = CANARIED["slow"], sample_images()["china"]
    before = changes(admin, model)
    assert (before["canary_weight"], before["data"]) == (1.0, []), before
    # Weight 1: every request is the candidate's, each slower than the 0.001 ms threshold.
    for _ in range(5):
        r, _ = infer(stack.ingress, model, auth, image)
        assert r.status_code == 200 and r.headers.get(SERVED_BY) == CANDIDATE, (r.status_code, dict(r.headers))
    # The controller looks every 2 s: the rollback is a change row by switchyard itself, with the numbers.
    eventually(lambda: bool(changes(admin, model)["data"]), "the automatic rollback", timeout_s=30)
    after = changes(admin, model)
    [row] = after["data"]
    assert (row["action"], row["actor"], row["candidate"]) == ("rollback", "switchyard (automatic)", CANDIDATE), row
    assert row["reason"].startswith("p99 ") and "over max_p99_ms 0.001 (" in row["reason"] and "candidate requests in the last 120 s" in row["reason"], row
    assert dt.datetime.fromisoformat(row["created_at"]) > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    assert after["canary_weight"] == 0.0 and not after["promoted"], after
    # All traffic back on the primary, in every API process (the change reaches each within its next poll).
    time.sleep(2.5)
    for _ in range(10):
        r, _ = infer(stack.ingress, model, auth, image)
        assert r.status_code == 200 and SERVED_BY not in r.headers and r.json()["model_name"] == model, dict(r.headers)
    # Nothing left to roll back; resume re-arms the canary (and this one goes back, once it has 5 requests again).
    nothing = admin.post(f"/v1/shadow/{model}/rollback", json={"reason": "again"})
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back", nothing.text
    resumed = admin.post(f"/v1/shadow/{model}/resume", json={"reason": "int8 build fixed"})
    assert resumed.status_code == 200 and resumed.json()["action"] == "resume", resumed.text
    assert changes(admin, model)["canary_weight"] == 1.0
    r, _ = infer(stack.ingress, model, auth, image)
    assert r.headers.get(SERVED_BY) == CANDIDATE


def test_a_canary_over_its_error_rate_is_rolled_back_automatically(stack: Stack, auth: dict[str, str], admin: httpx.Client) -> None:
    model, image = CANARIED["broken"], sample_images()["china"]
    assert changes(admin, model)["data"] == []
    injector = TritonFaultInjector(stack.cfg.triton_http_port).start()
    injector.failing.add(CANDIDATE_TRITON_MODEL)
    try:
        with vision_worker_behind(stack, injector):
            answers = [infer(stack.ingress, model, auth, image)[0] for _ in range(4)]
            # The fault took hold: Triton's answer for the candidate's model was an error each time...
            assert injector.counts[(CANDIDATE_TRITON_MODEL, 1, "failed")] == 4, injector.counts
            # ...which the client saw as the candidate's 503 (weight 1: every request is the candidate's).
            assert [(r.status_code, r.headers.get(SERVED_BY)) for r in answers] == [(503, CANDIDATE)] * 4, [r.text for r in answers]
            eventually(lambda: bool(changes(admin, model)["data"]), "the automatic rollback on the error rate", timeout_s=30)
            after = changes(admin, model)
            [row] = after["data"]
            assert (row["action"], row["actor"], row["candidate"]) == ("rollback", "switchyard (automatic)", CANDIDATE), row
            assert row["reason"].startswith("error rate 1.000 over max_error_rate 0.5 (4 errors in ") and "in the last 120 s" in row["reason"], row
            assert after["canary_weight"] == 0.0, after
            time.sleep(2.5)  # every API process polls the changes every 2 s
            r, scores = infer(stack.ingress, model, auth, image)
            assert r.status_code == 200 and SERVED_BY not in r.headers and scores is not None, (r.status_code, dict(r.headers))
            assert injector.counts[(CANDIDATE_TRITON_MODEL, 1, "failed")] == 4  # the primary answered: the candidate saw nothing more
    finally:
        injector.stop()


def test_promote_then_roll_back_by_hand_reaches_the_vision_worker(stack: Stack, auth: dict[str, str], admin: httpx.Client) -> None:
    model, image = CANARIED["promote"], sample_images()["flower"]
    worker = f"http://127.0.0.1:{stack.cfg.vision_http_port}"  # the vision worker itself: its own catalog, no API in between
    _, fp32 = infer(worker, "vision-classify", {}, image)
    _, int8 = infer(worker, CANDIDATE, {}, image)
    assert fp32 is not None and int8 is not None and float(np.abs(fp32 - int8).max()) > 1e-3  # the two networks' scores differ

    def worker_scores() -> np.ndarray[Any, Any]:
        r, scores = infer(worker, model, {}, image)
        assert scores is not None, r.text
        return scores

    assert np.allclose(worker_scores(), fp32, atol=2e-4)
    nothing = admin.post(f"/v1/shadow/{model}/rollback", json={"reason": "nothing yet"})
    assert nothing.status_code == 409 and nothing.json()["error"]["code"] == "nothing_to_roll_back", nothing.text

    promoted = admin.post(f"/v1/shadow/{model}/promote", json={"reason": "int8 agrees on 100 % of top-1 and is 2x faster"})
    assert promoted.status_code == 200, promoted.text
    p = promoted.json()
    assert (p["object"], p["model"], p["action"], p["candidate"]) == ("catalog.change", model, "promote", CANDIDATE), p
    assert p["actor"] == f"{DEV_TENANT}/development key (./switchyard up)", p  # who: the admin key's tenant and name
    # The worker applies it within its next poll (2 s): the model's name now runs the int8 network.
    eventually(lambda: bool(np.allclose(worker_scores(), int8, atol=2e-4)), "the vision worker serving the promoted model", timeout_s=20)
    r, scores = infer(stack.ingress, model, auth, image)
    assert r.status_code == 200 and scores is not None and np.allclose(scores, int8, atol=2e-4) and r.json()["model_name"] == model
    # The shadow went with the promotion: nothing more to promote.
    again = admin.post(f"/v1/shadow/{model}/promote", json={"reason": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "nothing_to_promote", again.text
    assert changes(admin, model)["promoted"] is True

    back = admin.post(f"/v1/shadow/{model}/rollback", json={"reason": "p99 regression seen by ops"})
    assert back.status_code == 200 and back.json()["action"] == "rollback", back.text
    eventually(lambda: bool(np.allclose(worker_scores(), fp32, atol=2e-4)), "the vision worker back on the checked-in model", timeout_s=20)
    listed = changes(admin, model)
    assert not listed["promoted"] and listed["canary_weight"] is None
    assert [(c["action"], c["reason"]) for c in listed["data"]] == [("promote", "int8 agrees on 100 % of top-1 and is 2x faster"),
                                                                   ("rollback", "p99 regression seen by ops")]
    assert all(c["actor"] == p["actor"] for c in listed["data"]) and listed["data"][0]["created_at"] <= listed["data"][1]["created_at"]


def test_the_routes_need_an_admin_key_a_known_model_and_a_reason(stack: Stack, http: httpx.Client, admin: httpx.Client) -> None:
    model = CANARIED["promote"]
    no_key = httpx.post(f"{stack.ingress}/v1/shadow/{model}/promote", json={"reason": "x"}, timeout=30)
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key", no_key.text
    for method, path in (("POST", "promote"), ("POST", "rollback"), ("POST", "resume"), ("GET", "changes")):
        r = http.request(method, f"/v1/shadow/{model}/{path}", json={"reason": "x"} if method == "POST" else None)
        assert r.status_code == 403, (path, r.text)
    unknown = admin.post("/v1/shadow/no-such-model/promote", json={"reason": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found", unknown.text
    assert admin.get("/v1/shadow/no-such-model/changes").status_code == 404
    # No shadow at all: nothing to promote.
    plain = admin.post("/v1/shadow/vision-classify-onnxruntime/promote", json={"reason": "x"})
    assert plain.status_code == 409 and plain.json()["error"]["code"] == "nothing_to_promote", plain.text
    for bad in ({}, {"reason": ""}, {"reason": "x", "force": True}, {"reason": 3}):
        r = admin.post(f"/v1/shadow/{model}/promote", json=bad)
        assert r.status_code == 422 and "error" in r.json(), (bad, r.text)
    # The report's route still answers beside these.
    assert admin.get(f"/v1/shadow/{model}").status_code == 200


def test_an_llm_canary_runs_jobs_on_the_candidate_and_is_rolled_back_on_its_ttft(stack: Stack, http: httpx.Client, admin: httpx.Client) -> None:
    model, candidate = CANARIED["llm"], CANARIED["llm_candidate"]
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
    for _ in range(2):  # weight 1: both jobs run on the candidate; their end records its outcome (worker-llm)
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers.get(SERVED_BY) == candidate, (r.status_code, dict(r.headers), r.text)
        assert r.json()["model"] == model  # the job keeps the name the client asked for
        job = http.get(f"/v1/jobs/{r.headers['x-switchyard-job-id']}")
        assert job.status_code == 200 and job.json()["model"] == model, job.text
    # Two jobs, each with a time to first token over 0.001 ms: rolled back by switchyard itself.
    eventually(lambda: bool(changes(admin, model)["data"]), "the automatic rollback of the LLM canary", timeout_s=30)
    [row] = changes(admin, model)["data"]
    assert (row["action"], row["actor"], row["candidate"]) == ("rollback", "switchyard (automatic)", candidate), row
    assert row["reason"].startswith("p99 ") and "(2 candidate requests in the last 300 s)" in row["reason"], row
    time.sleep(2.5)  # every API process polls the changes every 2 s
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and SERVED_BY not in r.headers, dict(r.headers)

"""Vision over KServe V2 with the official Triton clients, unmodified, through Nginx.

The stack runs a real Triton Inference Server (EfficientNet-Lite0, Python backend + onnxruntime)
and the vision worker (DALI preprocessing); HTTP goes to the ingress port, gRPC to the gRPC ingress.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import expect_error  # pants: no-infer-dep
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack

CLASSIFIERS = ["vision-classify", "vision-classify-fp32-int8", "vision-classify-onnxruntime"]
EXPECTED = ["palace", "daisy"]


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    imgs = sample_images()
    return [imgs["china"], imgs["flower"]]


# tritonclient.http's infer() writes Inference-Header-Content-Length into the headers dict it is
# given: its calls get a copy of the session's ``auth`` (``dict(auth)``).
@pytest.fixture(scope="module")
def grpc_auth(api_key: str) -> dict[str, str]:
    """The key as gRPC metadata (whose keys must be lower-case)."""
    return {"authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="module")
def http_client(stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    yield c
    c.close()


def image_input(module: Any, images: list[bytes]) -> Any:
    inp = module.InferInput("image", [len(images)], "BYTES")
    data = np.array(images, dtype=object)
    if module is httpclient:
        inp.set_data_from_numpy(data, binary_data=True)
    else:
        inp.set_data_from_numpy(data)
    return inp


def tensor_input(module: Any, x: np.ndarray[Any, Any], binary: bool = True) -> Any:
    """``x`` as the bare network's ``input`` tensor (HTTP: binary or JSON data)."""
    inp = module.InferInput("input", list(x.shape), np_to_triton_dtype(x.dtype))
    if module is httpclient:
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    return inp


def pixels(batch: int = 1, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).normal(size=(batch, 3, 224, 224)).astype(np.float32)


def top1(result: Any) -> list[str]:
    return [row[0].decode() for row in result.as_numpy("labels")]


# ---------------------------------------------------------------- server and model endpoints


def test_http_server_health_and_metadata(http_client: httpclient.InferenceServerClient, auth: dict[str, str]) -> None:
    assert http_client.is_server_live()
    assert http_client.is_server_ready()
    meta = http_client.get_server_metadata(headers=auth)
    assert meta["name"] == "switchyard" and "binary_tensor_data" in meta["extensions"]


def test_grpc_server_health_and_metadata(grpc_client: grpcclient.InferenceServerClient, grpc_auth: dict[str, str]) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    meta = grpc_client.get_server_metadata(as_json=True, headers=grpc_auth)
    assert meta["name"] == "switchyard" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_and_readiness_over_both_protocols(http_client: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient,
                                                         version: str, auth: dict[str, str], grpc_auth: dict[str, str]) -> None:
    want_inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    want_outputs = [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}, {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}]
    meta = http_client.get_model_metadata("vision-classify", model_version=version, headers=auth)
    assert (meta["name"], meta["versions"], meta["inputs"], meta["outputs"]) == ("vision-classify", ["1"], want_inputs, want_outputs)
    gmeta = grpc_client.get_model_metadata("vision-classify", model_version=version, as_json=True, headers=grpc_auth)
    assert gmeta["name"] == "vision-classify" and gmeta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta["outputs"]] == [(t["name"], t["datatype"], t["shape"]) for t in want_outputs]
    for model in [*CLASSIFIERS, "efficientnet-lite0"]:
        assert http_client.is_model_ready(model, model_version=version, headers=auth)
        assert grpc_client.is_model_ready(model, model_version=version, headers=grpc_auth)


# ---------------------------------------------------------------- inference and ensembles


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_ensembles_classify_jpeg_bytes_over_http(http_client: httpclient.InferenceServerClient, images: list[bytes], model: str, auth: dict[str, str]) -> None:
    outputs = [httpclient.InferRequestedOutput("labels", binary_data=True), httpclient.InferRequestedOutput("scores", binary_data=False)]
    result = http_client.infer(model, [image_input(httpclient, images)], outputs=outputs, headers=dict(auth))
    assert top1(result) == EXPECTED
    scores = result.as_numpy("scores")
    assert scores.shape == (2, 5) and np.all(np.diff(scores, axis=1) <= 0) and np.all((scores > 0) & (scores <= 1))


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_ensembles_classify_jpeg_bytes_over_grpc(grpc_client: grpcclient.InferenceServerClient, images: list[bytes], model: str,
                                                 grpc_auth: dict[str, str]) -> None:
    result = grpc_client.infer(model, [image_input(grpcclient, images)], parameters={"top_k": 3}, headers=grpc_auth)
    assert top1(result) == EXPECTED
    assert result.as_numpy("labels").shape == (2, 3) and result.as_numpy("scores").shape == (2, 3)


def test_fp32_int8_ensemble_averages_the_two_models(http_client: httpclient.InferenceServerClient, images: list[bytes], auth: dict[str, str]) -> None:
    """The combined top-1 probability lies between (or at) the two single models' own probabilities
    for that label: it is their average, not either model alone."""
    def scores(model: str) -> dict[str, float]:
        r = http_client.infer(model, [image_input(httpclient, images[:1])], parameters={"top_k": 1000}, headers=dict(auth))
        return {lab.decode(): float(s) for lab, s in zip(r.as_numpy("labels")[0], r.as_numpy("scores")[0], strict=True)}

    fp32, both = scores("vision-classify"), scores("vision-classify-fp32-int8")
    assert both != fp32
    assert abs(sum(both.values()) - 1.0) < 1e-3
    # average of fp32 and int8 → int8 = 2 * both - fp32 must itself be a probability distribution
    int8 = {k: 2 * both[k] - fp32[k] for k in both}
    assert min(int8.values()) > -1e-4 and abs(sum(int8.values()) - 1.0) < 1e-3


def test_json_and_binary_tensors_give_the_same_logits_on_both_protocols(http_client: httpclient.InferenceServerClient,
                                                                         grpc_client: grpcclient.InferenceServerClient, auth: dict[str, str],
                                                                         grpc_auth: dict[str, str]) -> None:
    x = pixels()
    results = []
    for binary in (False, True):
        r = http_client.infer("efficientnet-lite0", [tensor_input(httpclient, x, binary)], outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)],
                              headers=dict(auth))
        results.append(r.as_numpy("logits"))
    results.append(grpc_client.infer("efficientnet-lite0", [tensor_input(grpcclient, x)], headers=grpc_auth).as_numpy("logits"))
    assert results[0].shape == (1, 1000)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[1], results[2], rtol=0, atol=0)


def test_request_id_comes_back(http_client: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient, images: list[bytes],
                               auth: dict[str, str], grpc_auth: dict[str, str]) -> None:
    assert http_client.infer("vision-classify", [image_input(httpclient, images[:1])], request_id="req-42", headers=dict(auth)).get_response()["id"] == "req-42"
    assert grpc_client.infer("vision-classify", [image_input(grpcclient, images[:1])], request_id="req-43", headers=grpc_auth).get_response().id == "req-43"


# ---------------------------------------------------------------- errors


def test_http_errors(http_client: httpclient.InferenceServerClient, images: list[bytes], stack: Stack, auth: dict[str, str]) -> None:
    expect_error(lambda: http_client.get_model_metadata("no-such-model", headers=auth), "404", "unknown model")
    expect_error(lambda: http_client.get_model_metadata("vision-classify", model_version="7", headers=auth), "404", "no version")
    expect_error(lambda: http_client.infer("no-such-model", [image_input(httpclient, images[:1])], headers=dict(auth)), "404", "unknown model")

    wrong_shape = tensor_input(httpclient, np.zeros((1, 3, 100, 100), np.float32))
    expect_error(lambda: http_client.infer("efficientnet-lite0", [wrong_shape], headers=dict(auth)), "400", "does not match [-1, 3, 224, 224]")

    wrong_type = tensor_input(httpclient, np.zeros((1, 3, 224, 224), np.float64))
    expect_error(lambda: http_client.infer("efficientnet-lite0", [wrong_type], headers=dict(auth)), "400", "datatype FP64, model 'efficientnet-lite0' expects FP32")

    count = tensor_input(httpclient, pixels())
    count.set_shape([1, 3, 224, 223])  # the binary data no longer matches the declared shape
    expect_error(lambda: http_client.infer("efficientnet-lite0", [count], headers=dict(auth)), "400", "needs 599424 bytes, got 602112")

    expect_error(lambda: http_client.infer("vision-classify", [image_input(httpclient, [b"not an image"])], headers=dict(auth)), "400",
                 "image 0 could not be decoded")
    truncated = images[0][: len(images[0]) // 2]
    expect_error(lambda: http_client.infer("vision-classify", [image_input(httpclient, [images[1], truncated])], headers=dict(auth)), "400",
                 "image 1 could not be decoded: corrupt or truncated")
    assert top1(http_client.infer("vision-classify", [image_input(httpclient, images)], headers=dict(auth))) == EXPECTED  # the decoder recovered
    expect_error(lambda: http_client.infer("vision-classify", [image_input(httpclient, images[1:] * 33)], headers=dict(auth)), "400", "takes 1 to 32")
    expect_error(lambda: http_client.infer("vision-classify", [image_input(httpclient, images[:1])], parameters={"top_k": 0}, headers=dict(auth)), "400", "top_k")

    too_big = tensor_input(httpclient, pixels(20))  # 12 MB: over the 10 MB body limit
    expect_error(lambda: http_client.infer("efficientnet-lite0", [too_big], headers=dict(auth)), "413", "request body exceeds")


def test_http_errors_on_the_wire_are_v2_shaped(stack: Stack, auth: dict[str, str]) -> None:
    base = stack.ingress + "/v2/models"
    cases = [
        ("POST", "/vision-classify/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/vision-classify/infer", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["a", "b"]}]}).encode(),
         400, "needs 1 elements, data has 2"),
        ("POST", "/efficientnet-lite0/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, "x"]}]}).encode(),
         400, "does not match datatype FP32"),
        ("POST", "/vision-classify/infer", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "WEIRD", "data": ["a"]}]}).encode(),
         400, "unknown datatype"),
        ("POST", "/vision-classify/infer", json.dumps({"inputs": [{"name": "nope", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
         400, "has no input 'nope'"),
        ("GET", "/nope", None, 404, "unknown model"),
        ("GET", "/vision-classify/versions/2/ready", None, 404, "no version"),
        ("POST", "/vision-classify/infer", b"", 400, "empty inference request"),
    ]
    with httpx.Client(timeout=30, headers=auth) as c:
        for method, path, body, status, text in cases:
            r = c.request(method, base + path, content=body)
            assert r.status_code == status, (path, r.status_code, r.text)
            assert set(r.json()) == {"error"} and text in r.json()["error"], (path, r.text)
        # Binary extension: a declared header length beyond the body.
        r = c.post(base + "/vision-classify/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
        assert r.status_code == 400 and "outside the body" in r.json()["error"]
        r = c.post(base + "/vision-classify/infer", content=b"x" * (stack.cfg.max_body_bytes + 1))
        assert r.status_code == 413 and set(r.json()) == {"error"}


def test_grpc_errors(grpc_client: grpcclient.InferenceServerClient, images: list[bytes], grpc_auth: dict[str, str]) -> None:
    expect_error(lambda: grpc_client.get_model_metadata("no-such-model", headers=grpc_auth), "StatusCode.NOT_FOUND", "unknown model")
    expect_error(lambda: grpc_client.infer("no-such-model", [image_input(grpcclient, images[:1])], headers=grpc_auth), "StatusCode.NOT_FOUND", "unknown model")

    wrong_shape = tensor_input(grpcclient, np.zeros((1, 3, 100, 100), np.float32))
    expect_error(lambda: grpc_client.infer("efficientnet-lite0", [wrong_shape], headers=grpc_auth), "StatusCode.INVALID_ARGUMENT", "does not match")

    wrong_type = tensor_input(grpcclient, np.zeros((1, 3, 224, 224), np.float64))
    expect_error(lambda: grpc_client.infer("efficientnet-lite0", [wrong_type], headers=grpc_auth), "StatusCode.INVALID_ARGUMENT", "expects FP32")

    count = tensor_input(grpcclient, pixels())
    count.set_shape([1, 3, 224, 223])
    expect_error(lambda: grpc_client.infer("efficientnet-lite0", [count], headers=grpc_auth), "StatusCode.INVALID_ARGUMENT", "needs 599424 bytes, got 602112")

    expect_error(lambda: grpc_client.infer("vision-classify", [image_input(grpcclient, [b"\xff\xd8 broken"])], headers=grpc_auth),
                 "StatusCode.INVALID_ARGUMENT", "could not be decoded")

    too_big = tensor_input(grpcclient, pixels(20))
    expect_error(lambda: grpc_client.infer("efficientnet-lite0", [too_big], headers=grpc_auth), "StatusCode.RESOURCE_EXHAUSTED", "")


# ---------------------------------------------------------------- realtime lane: circuit breaker


def test_worker_serves_grpc_directly_and_through_its_tunnel(stack: Stack, images: list[bytes]) -> None:
    """The worker's own gRPC port (direct clients), and the HTTP tunnel the API forwards gRPC calls
    through (POST /v2/grpc/{Method}, switchyard.common.v2.asgi): unknown methods and undecodable
    messages are refused there, not crashed on."""
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.vision_grpc_port}")
    assert top1(direct.infer("vision-classify", [image_input(grpcclient, images)])) == EXPECTED
    expect_error(lambda: direct.infer("no-such-model", [image_input(grpcclient, images)]), "StatusCode.NOT_FOUND", "unknown model")
    direct.close()
    tunnel = f"http://127.0.0.1:{stack.cfg.vision_http_port}/v2/grpc"
    with httpx.Client(timeout=30) as c:
        live = c.post(f"{tunnel}/ServerLive", content=b"")
        assert live.status_code == 200 and live.headers["content-type"] == "application/x-protobuf" and live.content == b"\x08\x01"  # live=true
        unknown = c.post(f"{tunnel}/NoSuchMethod", content=b"")
        assert unknown.status_code == 501 and "no method NoSuchMethod" in unknown.json()["error"]
        garbage = c.post(f"{tunnel}/ModelInfer", content=b"\xff\xff\xff")
        assert garbage.status_code == 400 and unknown.json().keys() == {"error"} and "malformed ModelInferRequest" in garbage.json()["error"]


def test_worker_hands_triton_its_inputs_in_shared_memory_and_recovers_when_triton_forgets(http_client: httpclient.InferenceServerClient,
                                                                                          stack: Stack, auth: dict[str, str]) -> None:
    """The worker registers one system shared memory region with Triton and writes each batch-1
    tensor there (switchyard/common/v2/triton_shm.py); a Triton that lost the registration (restarted) gets
    that request's tensor as a body, and the region again before the next one."""
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.triton_http_port}")
    region = f"switchyard-vision-{stack.cfg.vision_http_port}"
    x = pixels(1, seed=7)
    want = http_client.infer("efficientnet-lite0", [tensor_input(httpclient, x)], headers=dict(auth)).as_numpy("logits")
    assert [r["name"] for r in triton.get_system_shared_memory_status()] == [region]
    assert x.tobytes() in Path(f"/dev/shm/{region}").read_bytes(), "the tensor was not passed through the shared region"

    triton.unregister_system_shared_memory(region)
    assert triton.get_system_shared_memory_status() == []
    np.testing.assert_allclose(http_client.infer("efficientnet-lite0", [tensor_input(httpclient, x)], headers=dict(auth)).as_numpy("logits"), want, rtol=1e-5)
    x2 = pixels(1, seed=8)
    http_client.infer("efficientnet-lite0", [tensor_input(httpclient, x2)], headers=dict(auth))
    assert [r["name"] for r in triton.get_system_shared_memory_status()] == [region]
    assert x2.tobytes() in Path(f"/dev/shm/{region}").read_bytes()
    triton.close()


def test_breaker_opens_when_the_worker_dies_and_closes_when_it_is_back(stack: Stack, images: list[bytes], auth: dict[str, str],
                                                                      grpc_auth: dict[str, str]) -> None:
    fail_max, reset_s = int(stack.cfg.api_env["SWITCHYARD_BREAKER_FAIL_MAX"]), float(stack.cfg.api_env["SWITCHYARD_BREAKER_RESET_S"])
    worker = stack.procs["worker-vision"]
    url = f"{stack.ingress}/v2/models/vision-classify/infer"
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode()
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    worker.stop()
    try:
        with httpx.Client(timeout=30, headers=auth) as c:
            answers = [c.post(url, content=body) for _ in range(fail_max + 2)]
            assert all(r.status_code == 503 and set(r.json()) == {"error"} for r in answers), [r.text for r in answers]
            assert "unreachable" in answers[0].json()["error"]
            opened = answers[-1]
            assert "circuit open" in opened.json()["error"] and 1 <= int(opened.headers["Retry-After"]) <= reset_s + 1
            for _ in range(fail_max + 1):
                with pytest.raises(InferenceServerException) as exc:
                    grpc_client.infer("vision-classify", [image_input(grpcclient, images[:1])], headers=grpc_auth)
                assert exc.value.status() == "StatusCode.UNAVAILABLE"
            assert "circuit open" in (exc.value.message() or "")
            # Job submission (durable lane) is unaffected: accepted, it runs when the worker is back.
            job = c.post(f"{stack.ingress}/v1/jobs", json={"domain": "vision", "model": "vision-classify", "input": {"images": [b64(images[0])]}})
            assert job.status_code == 202
    finally:
        worker.start()
        worker.wait_ready()
    time.sleep(reset_s + 0.2)
    with httpx.Client(timeout=30, headers=auth) as c:
        r = c.post(url, content=json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode())
        assert r.status_code == 400 and "could not be decoded" in r.json()["error"]  # the worker answered: breaker closed
        final = wait_job(c, stack, job.json()["id"])
        assert final["status"] == "succeeded" and final["result"]["predictions"][0][0]["label"] == "palace"
    assert top1(grpc_client.infer("vision-classify", [image_input(grpcclient, images)], headers=grpc_auth)) == EXPECTED
    grpc_client.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_job(c: httpx.Client, stack: Stack, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = c.get(f"{stack.ingress}/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s")

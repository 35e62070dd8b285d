"""Triton's stock image classification clients against Switchyard, through the ingress and on the
vision worker directly.

``image_client.py`` (tritonclient, HTTP or gRPC) and ``grpc_image_client.py`` (the generated gRPC
stub) of triton-inference-server/client (src/python/examples) make these calls, in this order: model
metadata, model configuration (they check one FP32 vector output and an NCHW/NHWC image input),
then one infer of the preprocessed image with ``class_count`` classes, printing "value (index) =
label" from Triton's classification strings. The tests make the same calls and checks (their own
code, not the clients'), plus the statistics and configuration extensions and their errors.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from conftest import expect_error  # pants: no-infer-dep
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import triton_to_np_dtype

from switchyard.devstack.models import cache_dir, sample_images
from switchyard.devstack.stack import Stack

MODEL = "efficientnet-lite0"
CLASSES = 3
# Where the clients point: Switchyard's ingress (Nginx → API → worker), or the vision worker's own ports.
TARGETS = ["ingress", "worker"]


def http_url(stack: Stack, target: str) -> str:
    return f"127.0.0.1:{stack.cfg.http_port if target == 'ingress' else stack.cfg.vision_http_port}"


def grpc_url(stack: Stack, target: str) -> str:
    return f"127.0.0.1:{stack.cfg.grpc_port if target == 'ingress' else stack.cfg.vision_grpc_port}"


@pytest.fixture(scope="module")
def china() -> bytes:
    """china.jpg cut to its central square, as the image file the clients are given.

    The clients squash any photo to 224×224; squashed from 640×427, the palace is EfficientNet-Lite0's
    4th class (bell cote 8.29, boathouse 7.72, lakeside 7.00, palace 6.97; the worker's own
    preprocessing, shorter side 256 + centre crop, finds the palace). Square, it is the first.
    ``test_classification_is_the_top_of_the_logits`` uses the whole photo."""
    img = Image.open(io.BytesIO(sample_images()["china"])).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    out = io.BytesIO()
    img.crop((left, top, left + side, top + side)).save(out, format="JPEG", quality=95)
    return out.getvalue()


# tritonclient.http's infer() writes Inference-Header-Content-Length into the headers dict it is
# given: its calls get a copy of the session's ``auth`` (``dict(auth)``).
@pytest.fixture(scope="module")
def grpc_auth(api_key: str) -> dict[str, str]:
    """The key as gRPC metadata (whose keys must be lower-case). The worker's own ports ignore it."""
    return {"authorization": f"Bearer {api_key}"}


@pytest.fixture(params=TARGETS)
def http_client(request: pytest.FixtureRequest, stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(http_url(stack, request.param), network_timeout=60)
    yield c
    c.close()


@pytest.fixture(params=TARGETS)
def grpc_client(request: pytest.FixtureRequest, stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(grpc_url(stack, request.param))
    yield c
    c.close()


def parse_model(inputs: list[Any], outputs: list[Any], max_batch_size: int, input_format: int) -> tuple[str, str, int, int, int, str]:
    """The clients' checks of an image classifier: (input name, output name, c, h, w, input datatype).
    ``inputs``/``outputs``: metadata tensors as (name, datatype, shape) triples."""
    assert len(inputs) == 1 and len(outputs) == 1
    (in_name, in_type, in_shape), (out_name, out_type, out_shape) = inputs[0], outputs[0]
    assert out_type == "FP32"
    batched = max_batch_size > 0
    assert sum(1 for d in out_shape[1 if batched else 0:] if d > 1) <= 1, "the output is not a vector"
    assert len(in_shape) == 3 + batched
    assert input_format in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC), mc.ModelInput.Format.Name(input_format)
    dims = in_shape[1:] if batched else in_shape
    c, h, w = dims if input_format == mc.ModelInput.FORMAT_NCHW else (dims[2], dims[0], dims[1])
    return in_name, out_name, c, h, w, in_type


def preprocess(image: bytes, fmt: int, dtype: str, h: int, w: int) -> np.ndarray[Any, Any]:
    """As the clients do with ``--scaling INCEPTION``: RGB, resized to w×h, x / 127.5 - 1, CHW for NCHW."""
    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("RGB").resize((w, h), Image.BILINEAR)).astype(triton_to_np_dtype(dtype))
    scaled = pixels / 127.5 - 1
    return np.transpose(scaled, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else scaled


def classes(rows: Any) -> list[list[list[str]]]:
    """Each batch row's "value:index:label" strings, split as the clients split them."""
    return [["".join(chr(x) for x in result).split(":") for result in row] for row in rows]


def check_classes(rows: Any) -> None:
    [top] = classes(rows)
    assert len(top) == CLASSES and all(len(c) == 3 for c in top), top
    assert top[0][2] == "palace", top
    values = [float(c[0]) for c in top]
    assert values == sorted(values, reverse=True) and all(c[1].isdigit() for c in top)


def executions(stats: dict[str, Any]) -> int:
    return sum(int(s.get("execution_count", 0)) for s in stats["model_stats"] if s["name"] == MODEL)


# ---------------------------------------------------------------- the stock clients' calls


def test_image_client_over_http(http_client: httpclient.InferenceServerClient, china: bytes, auth: dict[str, str]) -> None:
    meta = http_client.get_model_metadata(MODEL, model_version="", headers=auth)
    config = http_client.get_model_config(MODEL, model_version="", headers=auth)
    fmt = dict(mc.ModelInput.Format.items())[config["input"][0]["format"]]
    assert len(config["input"]) == 1
    in_name, out_name, c, h, w, dtype = parse_model([(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]],
                                                    [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]], config["max_batch_size"], fmt)
    assert (c, h, w) == (3, 224, 224) and config["output"][0]["label_filename"]
    before = executions(http_client.get_inference_statistics(MODEL, headers=auth))

    batch = np.stack([preprocess(china, fmt, dtype, h, w)], axis=0)
    inputs = [httpclient.InferInput(in_name, list(batch.shape), dtype)]
    inputs[0].set_data_from_numpy(batch)
    outputs = [httpclient.InferRequestedOutput(out_name, class_count=CLASSES)]
    result = http_client.infer(MODEL, inputs, request_id="1", model_version="", outputs=outputs, headers=dict(auth))
    assert result.get_response()["id"] == "1"
    check_classes(result.as_numpy(out_name))

    # The same as JSON instead of the binary extension.
    json_out = [httpclient.InferRequestedOutput(out_name, binary_data=False, class_count=CLASSES)]
    as_json = http_client.infer(MODEL, inputs, outputs=json_out, headers=dict(auth)).as_numpy(out_name)
    check_classes(np.array([[s if isinstance(s, bytes) else s.encode() for s in row] for row in as_json], dtype=object))

    stats = http_client.get_inference_statistics(MODEL, headers=auth)
    assert executions(stats) == before + 2
    [s] = [s for s in stats["model_stats"] if s["name"] == MODEL and s["version"] == "1"]
    assert s["inference_count"] >= 2 and s["last_inference"] > 0
    assert s["inference_stats"]["success"]["count"] >= 2 and s["inference_stats"]["compute_infer"]["ns"] > 0
    assert MODEL in {s["name"] for s in http_client.get_inference_statistics(headers=auth)["model_stats"]}


def test_image_client_over_grpc(grpc_client: grpcclient.InferenceServerClient, china: bytes, grpc_auth: dict[str, str]) -> None:
    meta = grpc_client.get_model_metadata(MODEL, model_version="", headers=grpc_auth)
    config = grpc_client.get_model_config(MODEL, model_version="", headers=grpc_auth).config
    assert len(config.input) == 1
    in_name, out_name, c, h, w, dtype = parse_model([(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
                                                    [(t.name, t.datatype, list(t.shape)) for t in meta.outputs], config.max_batch_size, config.input[0].format)
    assert config.output[0].label_filename and config.input[0].data_type == mc.TYPE_FP32
    before = executions(grpc_client.get_inference_statistics(MODEL, as_json=True, headers=grpc_auth))

    batch = np.stack([preprocess(china, config.input[0].format, dtype, h, w)], axis=0)
    inputs = [grpcclient.InferInput(in_name, list(batch.shape), dtype)]
    inputs[0].set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput(out_name, class_count=CLASSES)]
    result = grpc_client.infer(MODEL, inputs, request_id="1", model_version="", outputs=outputs, headers=grpc_auth)
    assert result.get_response().id == "1"
    check_classes(result.as_numpy(out_name))
    assert executions(grpc_client.get_inference_statistics(MODEL, as_json=True, headers=grpc_auth)) == before + 1


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_image_client_with_the_generated_stub(stack: Stack, china: bytes, grpc_auth: dict[str, str], target: str) -> None:
    metadata = list(grpc_auth.items())
    with grpc.insecure_channel(grpc_url(stack, target)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL, version=""), metadata=metadata)
        config = stub.ModelConfig(service_pb2.ModelConfigRequest(name=MODEL, version=""), metadata=metadata).config
        in_name, out_name, c, h, w, dtype = parse_model([(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
                                                        [(t.name, t.datatype, list(t.shape)) for t in meta.outputs], config.max_batch_size, config.input[0].format)
        request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="")
        output = request.outputs.add(name=out_name)
        output.parameters["classification"].int64_param = CLASSES
        request.inputs.add(name=in_name, datatype=dtype, shape=[1, c, h, w])
        request.raw_input_contents.append(preprocess(china, config.input[0].format, dtype, h, w).tobytes())
        response = stub.ModelInfer(request, metadata=metadata)
    assert len(response.outputs) == 1 and len(response.raw_output_contents) == 1
    raw, strings = response.raw_output_contents[0], []
    while raw:
        n = int.from_bytes(raw[:4], "little")
        strings.append(raw[4:4 + n])
        raw = raw[4 + n:]
    check_classes(np.array(strings, dtype=object).reshape(list(response.outputs[0].shape)))


def test_classification_is_the_top_of_the_logits(http_client: httpclient.InferenceServerClient, auth: dict[str, str]) -> None:
    """Triton's strings exactly: the N highest logits of the same input, "%f:index:label"."""
    x = preprocess(sample_images()["china"], mc.ModelInput.FORMAT_NCHW, "FP32", 224, 224)[None].astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    logits = http_client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits")], headers=dict(auth)).as_numpy("logits")[0]
    labels = (cache_dir() / "vision" / "models" / "imagenet_labels.txt").read_text().splitlines()
    want = [f"{float(logits[i]):f}:{i}:{labels[i]}".encode() for i in np.argsort(-logits)[:5]]
    assert b"palace" in [w.rsplit(b":", 1)[1] for w in want]  # 4th: the clients squash the photo (see ``china``)
    got = http_client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=5)], headers=dict(auth)).as_numpy("logits")
    assert got.tolist() == [want]


# ---------------------------------------------------------------- extensions: metadata and errors


def test_server_metadata_lists_the_extensions(http_client: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient,
                                              auth: dict[str, str], grpc_auth: dict[str, str]) -> None:
    want = {"binary_tensor_data", "classification", "model_configuration", "statistics"}
    assert want <= set(http_client.get_server_metadata(headers=auth)["extensions"])
    assert want <= set(grpc_client.get_server_metadata(as_json=True, headers=grpc_auth)["extensions"])


def test_model_configuration_of_the_ensembles(http_client: httpclient.InferenceServerClient, auth: dict[str, str]) -> None:
    config = http_client.get_model_config("vision-classify", model_version="1", headers=auth)
    assert config["name"] == "vision-classify" and config["max_batch_size"] == 32
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("image", "TYPE_STRING", [])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("labels", "TYPE_STRING", [-1]), ("scores", "TYPE_FP32", [-1])]


def test_unknown_models_and_bad_classification_requests_over_http(http_client: httpclient.InferenceServerClient, auth: dict[str, str]) -> None:
    expect_error(lambda: http_client.get_model_config("no-such-model", headers=auth), "404", "unknown model")
    expect_error(lambda: http_client.get_model_config(MODEL, model_version="7", headers=auth), "404", "no version")
    expect_error(lambda: http_client.get_inference_statistics("no-such-model", headers=auth), "404", "unknown model")
    x = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    expect_error(lambda: http_client.infer(MODEL, [x], outputs=[httpclient.InferRequestedOutput("nope", class_count=2)], headers=dict(auth)), "400",
                 "has no output 'nope'")
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object))
    expect_error(lambda: http_client.infer("vision-classify", [image], outputs=[httpclient.InferRequestedOutput("labels", class_count=2)], headers=dict(auth)), "400",
                 "labels' is BYTES: classification needs a numeric output")


def test_unknown_models_and_bad_classification_requests_over_grpc(grpc_client: grpcclient.InferenceServerClient, grpc_auth: dict[str, str]) -> None:
    expect_error(lambda: grpc_client.get_model_config("no-such-model", headers=grpc_auth), "StatusCode.NOT_FOUND", "unknown model")
    expect_error(lambda: grpc_client.get_inference_statistics("no-such-model", headers=grpc_auth), "StatusCode.NOT_FOUND", "unknown model")
    x = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    expect_error(lambda: grpc_client.infer(MODEL, [x], outputs=[grpcclient.InferRequestedOutput("nope", class_count=2)], headers=grpc_auth),
                 "StatusCode.INVALID_ARGUMENT", "has no output 'nope'")
    image = grpcclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object))
    expect_error(lambda: grpc_client.infer("vision-classify", [image], outputs=[grpcclient.InferRequestedOutput("labels", class_count=2)], headers=grpc_auth),
                 "StatusCode.INVALID_ARGUMENT", "labels' is BYTES: classification needs a numeric output")

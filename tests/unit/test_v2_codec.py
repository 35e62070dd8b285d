"""KServe V2 wire formats: JSON tensors, the binary-tensor extension and gRPC raw contents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.grpc_codec import request_from_pb, response_to_pb
from switchyard.common.v2.rest import encode_response, parse_request
from switchyard.common.v2.tensors import InferResponse, Tensor, deserialize_bytes, serialize_bytes


def binary_request(head: dict[str, object], blobs: list[bytes]) -> tuple[bytes, str]:
    h = json.dumps(head).encode()
    return h + b"".join(blobs), str(len(h))


def test_binary_extension_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    imgs = np.array([b"\xff\xd8abc", b""], dtype=object)
    body, hl = binary_request({"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        {"name": "img", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(serialize_bytes(imgs))}},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "labels"}]}, [x.tobytes(), serialize_bytes(imgs)])
    req = parse_request("m", None, body, hl)
    np.testing.assert_array_equal(req.inputs[0].data, x)
    assert list(req.inputs[1].data) == [b"\xff\xd8abc", b""]

    resp = InferResponse("m", "1", [Tensor("y", "FP32", x * 2), Tensor("labels", "BYTES", np.array([b"cat", b"dog"], dtype=object))], id="r1")
    out, headers = encode_response(resp, req)
    n = int(headers["inference-header-content-length"])
    head = json.loads(out[:n])
    assert head["id"] == "r1" and head["outputs"][1]["data"] == ["cat", "dog"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    np.testing.assert_array_equal(np.frombuffer(out[n:], dtype="<f4").reshape(2, 3), x * 2)


def test_json_tensors_nested_or_flat() -> None:
    req = parse_request("m", "1", json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}).encode(), None)
    assert req.inputs[0].data.tolist() == [[1, 2], [3, 4]] and req.version == "1"
    out, headers = encode_response(InferResponse("m", "1", [Tensor("x", "INT64", req.inputs[0].data)]), req)
    assert headers["content-type"] == "application/json" and json.loads(out)["outputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.parametrize(("body", "header", "message"), [
    (b"[1, 2", None, "not valid JSON"),
    (json.dumps({"inputs": []}).encode(), None, "inputs"),
    (json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0]}]}).encode(), None, "needs 2 elements, data has 1"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}).encode(), None, "does not match datatype INT32"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}).encode(), None, "out of range for UINT8"),
    (json.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}).encode(), None, "negative dimension"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}).encode(), None, "has no data"),
    (*binary_request({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}, [b"\0" * 8]),
     "needs 4 bytes, got 8"),
    (*binary_request({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, [b"\0" * 4]), "belong to no input"),
    (b"{}", "abc", "not an integer"),
])
def test_malformed_requests_are_400(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(V2Error) as exc:
        parse_request("m", None, body, header)
    assert exc.value.status == 400 and message in exc.value.message, exc.value.message


def test_bytes_elements_must_add_up() -> None:
    with pytest.raises(V2Error, match="claims 100 bytes"):
        deserialize_bytes("img", (100).to_bytes(4, "little") + b"short", 1)
    with pytest.raises(V2Error, match="needs 2 BYTES elements, data has 1"):
        deserialize_bytes("img", serialize_bytes(np.array([b"a"], dtype=object)), 2)


def test_grpc_raw_contents_round_trip() -> None:
    x = np.arange(4, dtype=np.float32)
    msg = pb.ModelInferRequest(model_name="m", id="7")
    msg.inputs.add(name="x", datatype="FP32", shape=[4])
    msg.raw_input_contents.append(x.tobytes())
    msg.parameters["top_k"].int64_param = 3
    req = request_from_pb(msg)
    assert req.parameters == {"top_k": 3} and req.id == "7"
    np.testing.assert_array_equal(req.inputs[0].data, x)
    out = response_to_pb(InferResponse("m", "1", [Tensor("y", "FP32", x)], id="7"))
    assert out.outputs[0].shape == [4] and np.frombuffer(out.raw_output_contents[0], "<f4").tolist() == x.tolist()

    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="INT32", shape=[2]).contents.int_contents.extend([5, 6])
    assert request_from_pb(typed).inputs[0].data.tolist() == [5, 6]

    bad = pb.ModelInferRequest(model_name="m")
    bad.inputs.add(name="x", datatype="FP32", shape=[2])
    bad.inputs.add(name="y", datatype="FP32", shape=[2])
    bad.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(V2Error, match="1 entries for 2 inputs"):
        request_from_pb(bad)

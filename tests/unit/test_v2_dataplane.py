"""The shared KServe V2 data plane and its two front ends, on a toy LocalDataPlane: Triton's model
configuration, statistics and classification extensions, over REST and the gRPC tunnel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from switchyard.common.v2 import grpc_frontend, rest_frontend
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2 import triton_extensions_pb2 as ext
from switchyard.common.v2.classification import classify
from switchyard.common.v2.config import V2Config, V2Model
from switchyard.common.v2.local_plane import LocalDataPlane
from switchyard.common.v2.tensors import InferRequest, InferResponse, Tensor

CONFIG = V2Config.model_validate({
    "backends": {"b": {"engine": "onnxruntime", "model": "m.onnx"}},
    "models": [
        {"name": "scorer", "domain": "vision", "max_batch_size": 4,
         "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2], "format": "NCHW"}],
         "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3], "labels": "labels.txt"}, {"name": "tag", "datatype": "BYTES", "shape": [-1]}],
         "steps": [{"name": "s", "op": "infer", "backend": "b", "inputs": ["x"], "outputs": ["y"]},
                   {"name": "t", "op": "infer", "backend": "b", "inputs": ["x"], "outputs": ["tag"]}]},
    ],
})


class Toy(LocalDataPlane):
    """y = the mean of each channel; tag = "ok"."""

    async def ready(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.model(name, version) is not None

    async def execute(self, req: InferRequest, model: V2Model) -> InferResponse:
        x = req.inputs[0].data
        out = {"y": Tensor("y", "FP32", x.reshape(x.shape[0], 3, -1).mean(axis=2).astype(np.float32)),
               "tag": Tensor("tag", "BYTES", np.array([b"ok"] * x.shape[0], dtype=object))}
        names = [o.name for o in req.outputs] if req.outputs else list(out)
        return InferResponse(model.name, "1", [out[n] for n in names], id=req.id)


@pytest.fixture
def plane(tmp_path: Path) -> Toy:
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    p = Toy("toy", tmp_path)
    p.serve({m.name: m for m in CONFIG.models})
    return p


@pytest_asyncio.fixture
async def client(plane: Toy) -> AsyncIterator[httpx.AsyncClient]:
    app = rest_frontend.create_app(plane, 1 << 20, grpc_frontend.tunnel(plane))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


def pixels() -> list[float]:
    # channel means 1, 3, 2: classes green, blue, red
    return [1.0] * 4 + [3.0] * 4 + [2.0] * 4


def test_classification_strings_are_tritons() -> None:
    t = Tensor("y", "FP32", np.array([[0.5, 2.0, 1.25]], dtype=np.float32))
    assert classify(t, 2, np.array([b"a", b"b", b"c"], dtype=object)).data.tolist() == [[b"2.000000:1:b", b"1.250000:2:c"]]
    assert classify(t, 9, None).data.tolist() == [[b"2.000000:1", b"1.250000:2", b"0.500000:0"]]
    assert classify(Tensor("n", "INT32", np.array([[3, 7]], dtype=np.int32)), 1, None).data.tolist() == [[b"7:1"]]


@pytest.mark.asyncio
async def test_server_metadata_config_and_index(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "toy" and {"classification", "model_configuration", "statistics", "binary_tensor_data"} <= set(meta["extensions"])
    config = (await client.get("/v2/models/scorer/versions/1/config")).json()
    assert config["max_batch_size"] == 4
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 2, 2], "optional": False}]
    assert config["output"][0] == {"name": "y", "data_type": "TYPE_FP32", "dims": [3], "label_filename": "labels.txt"}
    assert config["output"][1]["data_type"] == "TYPE_STRING"
    # Model metadata keeps to V2's fields.
    assert (await client.get("/v2/models/scorer")).json()["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 2, 2]}]
    assert (await client.post("/v2/repository/index")).json() == [{"name": "scorer", "version": "1", "state": "READY", "reason": ""}]
    for path in ("/v2/models/nope/config", "/v2/models/nope/stats", "/v2/models/scorer/versions/2/config"):
        r = await client.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, path


@pytest.mark.asyncio
async def test_classification_over_rest_json_and_counted_in_statistics(client: httpx.AsyncClient) -> None:
    body = {"id": "r", "inputs": [{"name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": pixels()}],
            "outputs": [{"name": "y", "parameters": {"classification": 2}}]}
    r = await client.post("/v2/models/scorer/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "y", "datatype": "BYTES", "shape": [1, 2], "data": ["3.000000:1:green", "2.000000:2:blue"]}]

    bad = {**body, "outputs": [{"name": "tag", "parameters": {"classification": 2}}]}
    r = await client.post("/v2/models/scorer/infer", content=json.dumps(bad))
    assert r.status_code == 400 and "classification needs a numeric output" in r.json()["error"]
    r = await client.post("/v2/models/scorer/infer", content=json.dumps({**body, "outputs": [{"name": "y", "parameters": {"classification": 0}}]}))
    assert r.status_code == 400 and "positive integer" in r.json()["error"]

    [s] = (await client.get("/v2/models/scorer/stats")).json()["model_stats"]
    assert (s["name"], s["version"], s["inference_count"], s["execution_count"]) == ("scorer", "1", 1, 1)
    assert s["inference_stats"]["success"]["count"] == 1 and s["inference_stats"]["fail"]["count"] == 1  # the BYTES one failed in the plane
    assert (await client.get("/v2/models/stats")).json()["model_stats"][0]["execution_count"] == 1


@pytest.mark.asyncio
async def test_the_grpc_tunnel_answers_tritons_extension_messages(client: httpx.AsyncClient) -> None:
    async def call(method: str, msg: object) -> bytes:
        r = await client.post(f"/v2/grpc/{method}", content=msg.SerializeToString())  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text
        return r.content

    config = ext.ModelConfigResponse.FromString(await call("ModelConfig", ext.ModelConfigRequest(name="scorer"))).config
    assert config.input[0].format == ext.ModelInput.FORMAT_NCHW and list(config.input[0].dims) == [3, 2, 2]
    assert config.output[0].label_filename == "labels.txt"

    req = pb.ModelInferRequest(model_name="scorer", id="g")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 3, 2, 2])
    req.raw_input_contents.append(np.array(pixels(), dtype="<f4").tobytes())
    req.outputs.add(name="y").parameters["classification"].int64_param = 1
    resp = pb.ModelInferResponse.FromString(await call("ModelInfer", req))
    assert (resp.outputs[0].datatype, list(resp.outputs[0].shape), resp.raw_output_contents[0]) == ("BYTES", [1, 1], b"\x10\x00\x00\x003.000000:1:green")

    stats = ext.ModelStatisticsResponse.FromString(await call("ModelStatistics", ext.ModelStatisticsRequest()))
    assert [(s.name, s.execution_count) for s in stats.model_stats] == [("scorer", 1)]
    index = ext.RepositoryIndexResponse.FromString(await call("RepositoryIndex", ext.RepositoryIndexRequest(ready=True)))
    assert [(m.name, m.state) for m in index.models] == [("scorer", "READY")]
    r = await client.post("/v2/grpc/ModelConfig", content=ext.ModelConfigRequest(name="nope").SerializeToString())
    assert r.status_code == 404 and "unknown model" in r.json()["error"]

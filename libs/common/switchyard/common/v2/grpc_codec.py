"""KServe V2 over gRPC: generated messages ↔ the data plane's requests and responses."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2 import triton_extensions_pb2 as ext
from switchyard.common.v2.classification import class_count
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.statistics import StatisticsResponse
from switchyard.common.v2.tensors import InferRequest, InferResponse, RequestedOutput, Tensor, from_list, from_raw, to_raw

SERVICE = "inference.GRPCInferenceService"

# Typed-contents field per datatype (requests that do not use raw_input_contents).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


M = TypeVar("M", bound=Message)


def parse_message(msg_type: type[M], raw: bytes) -> M:
    try:
        return msg_type.FromString(raw)
    except DecodeError:
        raise V2Error(400, f"malformed {msg_type.__name__}") from None


def _param(p: pb.InferParameter) -> bool | int | str | None:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def request_from_pb(msg: pb.ModelInferRequest) -> InferRequest:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise V2Error(400, f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs")
    inputs: list[Tensor] = []
    for n, i in enumerate(msg.inputs):
        shape = list(i.shape)
        if raw:
            arr = from_raw(i.name, i.datatype, shape, raw[n])
        else:
            field = _CONTENTS.get(i.datatype)
            if field is None:
                raise V2Error(400, f"input '{i.name}': {i.datatype!r} needs raw_input_contents")
            values: list[Any] = list(getattr(i.contents, field))
            if i.datatype == "BYTES":
                arr = from_raw(i.name, "BYTES", shape, b"".join(len(v).to_bytes(4, "little") + v for v in values))
            else:
                arr = from_list(i.name, i.datatype, shape, values)
        inputs.append(Tensor(i.name, i.datatype, arr))
    outputs = [RequestedOutput(o.name, True, class_count(o.name, _param(o.parameters["classification"]) if "classification" in o.parameters else None))
               for o in msg.outputs] if msg.outputs else None
    params = {k: _param(v) for k, v in msg.parameters.items()}
    return InferRequest(model=msg.model_name, version=msg.model_version or None, id=msg.id or None, inputs=inputs, outputs=outputs, parameters=params,
                        binary_output=True)


def response_to_pb(resp: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id or "")
    for t in resp.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        msg.raw_output_contents.append(to_raw(t))
    return msg


def response_outputs(msg: pb.ModelInferResponse) -> dict[str, np.ndarray[Any, Any]]:
    """A response's outputs as arrays (the client's side of ``response_to_pb``; raw contents, as
    Switchyard's and Triton's servers send them)."""
    raw = list(msg.raw_output_contents)
    if len(raw) != len(msg.outputs):
        raise V2Error(502, f"the response has {len(raw)} raw_output_contents for {len(msg.outputs)} outputs")
    return {o.name: from_raw(o.name, o.datatype, list(o.shape), raw[n]) for n, o in enumerate(msg.outputs)}


def metadata_to_pb(model: V2Model) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=model.name, versions=model.versions, platform=model.platform)
    for spec, target in ((model.inputs, msg.inputs), (model.outputs, msg.outputs)):
        for t in spec:
            target.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return msg


def config_to_pb(config: dict[str, Any]) -> ext.ModelConfigResponse:
    """Triton's model configuration (``V2Model.triton_config``) as a ``ModelConfigResponse``."""
    return ext.ModelConfigResponse(config=json_format.ParseDict(config, ext.ModelConfig()))


def statistics_to_pb(stats: StatisticsResponse) -> ext.ModelStatisticsResponse:
    return json_format.ParseDict(stats.model_dump(), ext.ModelStatisticsResponse())


def index_to_pb(index: list[dict[str, str]]) -> ext.RepositoryIndexResponse:
    return json_format.ParseDict({"models": index}, ext.RepositoryIndexResponse())

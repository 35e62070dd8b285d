"""KServe V2 over HTTP: JSON tensors and the binary-tensor extension, both directions.

Binary extension: the body is the JSON header (its length in ``Inference-Header-Content-Length``)
followed by the raw tensors in input order; an input's ``parameters.binary_data_size`` says how many
bytes are its own. Outputs come back binary when asked for per output (``binary_data``) or for all
(request parameter ``binary_data_output``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.common.v2.classification import class_count
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.tensors import InferRequest, InferResponse, RequestedOutput, Tensor, from_list, from_raw, to_list, to_raw

HEADER_LENGTH = "inference-header-content-length"
Params = dict[str, bool | int | float | str]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RestInput(_Body):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=16)
    datatype: str = Field(max_length=16)
    parameters: Params = {}
    data: Any = None


class RestOutput(_Body):
    name: str = Field(min_length=1, max_length=256)
    parameters: Params = {}


class RestRequest(_Body):
    id: str | None = Field(default=None, max_length=256)
    parameters: Params = {}
    inputs: list[RestInput] = Field(min_length=1, max_length=64)
    outputs: list[RestOutput] | None = Field(default=None, max_length=64)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))


def parse_request(model: str, version: str | None, body: bytes, header_length: str | None) -> InferRequest:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise V2Error(400, "Inference-Header-Content-Length is not an integer") from None
        if not 0 < n <= len(body):
            raise V2Error(400, f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        req = RestRequest.model_validate_json(head)
    except ValidationError as e:
        if any(err.get("type") == "json_invalid" for err in e.errors()):
            raise V2Error(400, "request body is not valid JSON") from None
        raise V2Error(400, f"invalid inference request: {_first_error(e)}") from None
    inputs: list[Tensor] = []
    offset = 0
    for i in req.inputs:
        size = i.parameters.get("binary_data_size")
        if size is not None:
            if i.data is not None:
                raise V2Error(400, f"input '{i.name}': give either data or binary_data_size, not both")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise V2Error(400, f"input '{i.name}': binary_data_size {size} does not fit the {len(binary) - offset} binary bytes left")
            arr = from_raw(i.name, i.datatype, i.shape, bytes(binary[offset:offset + size]))
            offset += size
        elif i.data is None:
            raise V2Error(400, f"input '{i.name}' has no data")
        else:
            arr = from_list(i.name, i.datatype, i.shape, i.data)
        inputs.append(Tensor(i.name, i.datatype, arr))
    if offset != len(binary):
        raise V2Error(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    default_binary = bool(req.parameters.get("binary_data_output", False))
    outputs = None
    if req.outputs is not None:
        outputs = [RequestedOutput(o.name, bool(o.parameters.get("binary_data", default_binary)), class_count(o.name, o.parameters.get("classification")))
                   for o in req.outputs]
    params = {k: v for k, v in req.parameters.items() if k != "binary_data_output"}
    return InferRequest(model=model, version=version, id=req.id, inputs=inputs, outputs=outputs, parameters=params, binary_output=default_binary)


def encode_response(resp: InferResponse, req: InferRequest) -> tuple[bytes, dict[str, str]]:
    """(body, headers): plain JSON, or JSON header + binary tensors when any output is binary."""
    wanted = {o.name: o.binary for o in req.outputs} if req.outputs is not None else {}
    outs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in resp.outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        binary = wanted.get(t.name)
        if binary if binary is not None else req.binary_output:
            raw = to_raw(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_list(t)
        outs.append(entry)
    head: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version, "outputs": outs}
    if resp.id:
        head["id"] = resp.id
    header = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}

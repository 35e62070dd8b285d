"""KServe V2 tensors: datatypes and wire encodings (JSON lists, raw little-endian bytes).

Shared by every V2 data plane (REST + binary extension, gRPC) so they agree byte for byte.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from switchyard.common.v2.errors import V2Error

# V2 datatype → numpy dtype (BYTES: object arrays of ``bytes``).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(DTYPES)

@dataclass
class Tensor:
    name: str
    datatype: str
    data: np.ndarray[Any, Any]

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.data.shape]


@dataclass
class RequestedOutput:
    name: str
    # None: the request's default (REST: JSON unless binary_data_output; gRPC: always raw).
    binary: bool | None = None
    # Triton's classification extension: the top N classes as "value:index[:label]" strings.
    classification: int | None = None


@dataclass
class InferRequest:
    model: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Outputs not named in ``outputs`` come back binary (REST ``binary_data_output``; gRPC: always).
    binary_output: bool = False


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str | None = None


def element_count(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def check_shape(name: str, shape: list[int]) -> None:
    if any(d < 0 for d in shape):
        raise V2Error(400, f"input '{name}': shape {shape} has a negative dimension")


def dtype_of(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise V2Error(400, f"input '{name}': unknown datatype {datatype!r} (known: {', '.join(DATATYPES)})") from None


def serialize_bytes(arr: np.ndarray[Any, Any]) -> bytes:
    """BYTES elements as the V2 binary form: each a 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes(name: str, raw: bytes, count: int) -> np.ndarray[Any, Any]:
    out: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise V2Error(400, f"input '{name}': truncated BYTES element length at offset {pos}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise V2Error(400, f"input '{name}': BYTES element {len(out)} claims {n} bytes, {len(raw) - pos} left")
        out.append(bytes(view[pos:pos + n]))
        pos += n
    if len(out) != count:
        raise V2Error(400, f"input '{name}': shape needs {count} BYTES elements, data has {len(out)}")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray[Any, Any]:
    """A tensor from its raw little-endian bytes (REST binary extension, gRPC raw contents)."""
    dtype = dtype_of(name, datatype)
    check_shape(name, shape)
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise V2Error(400, f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def to_raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return serialize_bytes(t.data)
    return np.ascontiguousarray(t.data, dtype=DTYPES[t.datatype].newbyteorder("<")).tobytes()


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for d in data:
        out.extend(_flatten(d) if isinstance(d, list) else [d])
    return out


def from_list(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from JSON ``data`` (flat or nested, row-major). BYTES elements are strings."""
    dtype = dtype_of(name, datatype)
    check_shape(name, shape)
    flat = _flatten(data)
    count = element_count(shape)
    if len(flat) != count:
        raise V2Error(400, f"input '{name}': shape {shape} needs {count} elements, data has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise V2Error(400, f"input '{name}': BYTES data must be strings in JSON (use the binary extension for raw bytes)")
        arr = np.empty(count, dtype=object)
        arr[:] = [x.encode() for x in flat]
        return arr.reshape(shape)
    kinds = (bool,) if datatype == "BOOL" else (int, float) if datatype.startswith("FP") else (int,)
    if not all(isinstance(x, kinds) and (datatype == "BOOL" or not isinstance(x, bool)) for x in flat):
        raise V2Error(400, f"input '{name}': data does not match datatype {datatype}")
    if dtype.kind in "iu" and flat:
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise V2Error(400, f"input '{name}': values out of range for {datatype}")
    return np.asarray(flat, dtype=dtype).reshape(shape)


def to_list(t: Tensor) -> list[Any]:
    flat = t.data.reshape(-1)
    if t.datatype == "BYTES":
        try:
            return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        except UnicodeDecodeError:
            raise V2Error(400, f"output '{t.name}' holds non-UTF-8 bytes: request it with binary_data") from None
    return flat.tolist()  # type: ignore[no-any-return]

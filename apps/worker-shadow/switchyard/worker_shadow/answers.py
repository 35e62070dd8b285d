"""KServe V2 answers as arrays, whatever form they came in (REST JSON or JSON with binary tensors,
read with Triton's HTTP client library; gRPC, read with the platform's own messages: Triton's gRPC
client registers the same protobuf names): the shadow worker compares a primary's and a
candidate's answers output by output."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.http as triton_http

from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.grpc_codec import response_outputs


def outputs(protocol: str, body: bytes, headers: dict[str, str]) -> dict[str, np.ndarray[Any, Any]]:
    """Output name → array (BYTES as str); ``headers``' names lower-cased."""
    if protocol == "grpc":
        arrays = response_outputs(pb.ModelInferResponse.FromString(body))
    else:
        length = headers.get("inference-header-content-length")
        result = triton_http.InferResult.from_response_body(body, verbose=False, header_length=int(length) if length else None)
        arrays = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    return {name: _text(a) if a.dtype == object else a for name, a in arrays.items()}


def _text(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(a)
    return out


def ranked(out: dict[str, np.ndarray[Any, Any]], k: int) -> list[list[Any]]:
    """Per row, what the model ranks first to last: its ``labels`` (classifiers), its ``item_ids``
    (rankers), else the indices of its first output's ``k`` largest values (bare networks)."""
    for name in ("labels", "item_ids"):
        if name in out:
            a = out[name]
            return [list(row) for row in a.reshape(a.shape[0], -1)] if a.ndim else [[a.item()]]
    first = next(iter(out.values()))
    scores = first.reshape(first.shape[0], -1)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in scores]

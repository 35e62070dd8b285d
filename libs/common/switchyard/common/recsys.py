"""Recommendations as KServe V2 tensors: the contract of the recsys ranking models (``recsys-rank``).

One user per request. Inputs: ``user_id`` INT64 [1]; ``candidates`` INT64 [1, C] (optional: without
it, retrieval finds the candidates). Parameters: ``k`` (1-100), ``exclude_seen`` (bool). Outputs:
``item_ids`` INT64 [1, k], ``scores`` FP32 [1, k], ``reasons`` BYTES [1, k] (retrieved, candidate,
popular), ``unknown_items`` INT64 [1, U] (candidates the feature store does not know).

Shared by the API (``/v1/recommendations`` forwards a V2 JSON body to the worker) and the recsys
worker (its jobs call the same data plane in process), so both lanes speak one contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from switchyard.common.contracts import Recommendation, RecommendationQuery, RecommendedItem
from switchyard.common.v2.tensors import InferRequest, Tensor

USER_INPUT: Final = "user_id"
CANDIDATES_INPUT: Final = "candidates"
OUTPUTS: Final = ("item_ids", "scores", "reasons", "unknown_items")
POPULAR: Final = "popular"


def parameters(q: RecommendationQuery) -> dict[str, Any]:
    return {"k": q.k, "exclude_seen": q.exclude_seen}


def infer_request(model: str, q: RecommendationQuery, request_id: str | None = None) -> InferRequest:
    """The V2 request for one user (for a data plane in this process)."""
    inputs = [Tensor(USER_INPUT, "INT64", np.array([q.user_id], dtype=np.int64))]
    if q.candidates is not None:
        inputs.append(Tensor(CANDIDATES_INPUT, "INT64", np.array([q.candidates], dtype=np.int64)))
    return InferRequest(model=model, inputs=inputs, id=request_id, parameters=parameters(q))


def v2_json(q: RecommendationQuery) -> dict[str, Any]:
    """The same request as a V2 REST JSON body."""
    inputs: list[dict[str, Any]] = [{"name": USER_INPUT, "datatype": "INT64", "shape": [1], "data": [q.user_id]}]
    if q.candidates is not None:
        inputs.append({"name": CANDIDATES_INPUT, "datatype": "INT64", "shape": [1, len(q.candidates)], "data": q.candidates})
    return {"inputs": inputs, "outputs": [{"name": n} for n in OUTPUTS], "parameters": parameters(q)}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes | bytearray) else str(v)


def from_outputs(user_id: int, outputs: Mapping[str, Any]) -> Recommendation:
    """A recommendation from the model's outputs by name (numpy arrays or V2 JSON ``data`` lists)."""
    ids = np.asarray(outputs["item_ids"]).reshape(-1)
    scores = np.asarray(outputs["scores"]).reshape(-1)
    reasons = [_text(r) for r in np.asarray(outputs["reasons"], dtype=object).reshape(-1)]
    unknown = np.asarray(outputs.get("unknown_items", []), dtype=np.int64).reshape(-1)
    items = [RecommendedItem(item_id=int(i), score=float(s), reason=r) for i, s, r in zip(ids, scores, reasons, strict=True)]  # type: ignore[arg-type]
    return Recommendation(user_id=user_id, items=items, fallback=any(r == POPULAR for r in reasons), unknown_items=[int(u) for u in unknown])


def from_v2_json(user_id: int, body: Mapping[str, Any]) -> Recommendation:
    """A recommendation from a V2 REST JSON response body."""
    return from_outputs(user_id, {o["name"]: o.get("data", []) for o in body.get("outputs", [])})

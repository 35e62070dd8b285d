"""The V2 model file is validated at start-up: bad DAGs are refused with a message naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from switchyard.common.catalog import build_catalog
from switchyard.common.v2.config import V2Config

REPO = Path(__file__).resolve().parents[2]


def model(steps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"name": "m", "domain": "vision", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}, {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
            "steps": steps, **kw}


BACKENDS = {"a": {"engine": "triton", "model": "x"}, "b": {"engine": "onnxruntime", "model": "x.onnx"}}
GOOD = [
    {"name": "decode", "op": "preprocess", "inputs": ["image"], "outputs": ["pixels"]},
    {"name": "fa", "op": "infer", "backend": "a", "inputs": ["pixels"], "outputs": ["la"]},
    {"name": "fb", "op": "infer", "backend": "b", "inputs": ["pixels"], "outputs": ["lb"]},
    {"name": "avg", "op": "average_probs", "inputs": ["la", "lb"], "outputs": ["p"]},
    {"name": "top", "op": "topk", "inputs": ["p"], "outputs": ["labels", "scores"]},
]


def test_the_shipped_model_file_is_valid() -> None:
    cfg = build_catalog([REPO / "infra" / "catalog" / "models.yaml"], env={}).v2
    names = {m.name for m in cfg.models}
    assert {"vision-classify", "vision-classify-fp32-int8", "vision-classify-onnxruntime", "efficientnet-lite0"} <= names
    classify = cfg.get("vision-classify")
    assert classify is not None and classify.image_input() == "image"
    assert cfg.get("efficientnet-lite0").image_input() is None  # type: ignore[union-attr]


def test_levels_run_independent_backends_together_in_any_declared_order() -> None:
    cfg = V2Config.model_validate({"backends": BACKENDS, "models": [model(list(reversed(GOOD)))]})
    levels = [[s.name for s in level] for level in cfg.models[0].levels()]
    assert levels == [["decode"], ["fb", "fa"], ["avg"], ["top"]]


@pytest.mark.parametrize(("steps", "backends", "message"), [
    ([{**GOOD[0], "inputs": ["top_labels"]}, *GOOD[1:]], BACKENDS, "unknown values ['top_labels']"),
    ([{**GOOD[0], "inputs": ["p"]}, *GOOD[1:]], BACKENDS, "a cycle"),
    ([*GOOD, {"name": "again", "op": "preprocess", "inputs": ["image"], "outputs": ["pixels"]}], BACKENDS, "produced twice"),
    ([GOOD[0], {**GOOD[1], "backend": "nope"}, *GOOD[2:]], BACKENDS, "unknown backend 'nope'"),
    ([GOOD[0], {k: v for k, v in GOOD[1].items() if k != "backend"}, *GOOD[2:]], BACKENDS, "'backend' is required by infer"),
    ([*GOOD[:3], {**GOOD[3], "inputs": ["la"]}, GOOD[4]], BACKENDS, "average_probs takes 2+ inputs, got 1"),
    ([*GOOD[:4], {**GOOD[4], "outputs": ["labels"]}], BACKENDS, "topk produces 2 outputs, got 1"),
    ([*GOOD[:4], {**GOOD[4], "op": "sharpen"}], BACKENDS, "unknown op 'sharpen'"),
    (GOOD[:4], BACKENDS, "outputs ['labels', 'scores'] are produced by no step"),
])
def test_bad_models_are_refused(steps: list[dict[str, Any]], backends: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=None) as exc:
        V2Config.model_validate({"backends": backends, "models": [model(steps)]})
    assert message in str(exc.value)


def test_duplicate_models_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate model names"):
        V2Config.model_validate({"backends": BACKENDS, "models": [model(GOOD), model(GOOD)]})
    with pytest.raises(ValidationError, match="dimensions are -1 or positive"):
        V2Config.model_validate({"backends": BACKENDS, "models": [model(GOOD, inputs=[{"name": "image", "datatype": "BYTES", "shape": [0]}])]})
    with pytest.raises(ValidationError):
        V2Config.model_validate({"backends": BACKENDS, "models": [model(GOOD, inputs=[{"name": "image", "datatype": "STRING", "shape": [-1]}])]})

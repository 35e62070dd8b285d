"""Triton's classification extension: an output requested with ``classification: N`` (REST: the
output's ``parameters``; gRPC: its ``int64_param``) comes back as the N highest values of each batch
row, a BYTES tensor [batch, N] of ``"value:index:label"`` strings, highest first (``:label`` only
where the output declares a labels file). Values are printed as C's ``%f``, as Triton prints them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.tensors import RequestedOutput, Tensor


def class_count(output: str, value: Any) -> int | None:
    """The ``classification`` parameter of a requested output, checked (None: not asked for)."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise V2Error(400, f"output '{output}': classification must be a positive integer, got {value!r}")
    return value


def check(model: V2Model, outputs: list[RequestedOutput] | None) -> None:
    """Refuse classification of an output the model lacks or that holds no numbers, before running it."""
    for o in outputs or ():
        if o.classification is None:
            continue
        spec = model.output(o.name)
        if spec is None:
            raise V2Error(400, f"model '{model.name}' has no output '{o.name}' (outputs: {', '.join(t.name for t in model.outputs)})")
        if spec.datatype in ("BYTES", "BOOL"):
            raise V2Error(400, f"output '{o.name}' is {spec.datatype}: classification needs a numeric output")


def classify(t: Tensor, n: int, labels: np.ndarray[Any, Any] | None) -> Tensor:
    """``t`` ([batch, ...] numbers) as its top ``n`` classes per batch row; ``labels``: bytes per index."""
    rows = t.data.reshape(t.data.shape[0], -1) if t.data.ndim else t.data.reshape(1, 1)
    k = min(n, rows.shape[1])
    top = np.argsort(rows, axis=1, kind="stable")[:, ::-1][:, :k]
    fmt = b"%f:%d" if rows.dtype.kind == "f" else b"%d:%d"
    out = np.empty(top.shape, dtype=object)
    for r, (row, idx) in enumerate(zip(rows, top, strict=True)):
        for c, i in enumerate(idx):
            s = fmt % (row[i], i)
            out[r, c] = s + b":" + labels[i] if labels is not None and i < len(labels) else s
    return Tensor(t.name, "BYTES", out)

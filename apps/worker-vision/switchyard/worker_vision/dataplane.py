"""The vision worker's KServe V2 data plane: validate a request against its model, run the model's
steps (see switchyard.common.v2.config), answer with the requested outputs.

A ``LocalDataPlane`` (switchyard.common.v2.local_plane: request decoding, classification,
statistics), served by the shared REST and gRPC front ends; the durable-lane activity calls the same
``infer``: one code path for both lanes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.config import Step, V2Config, V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.local_plane import LocalDataPlane
from switchyard.common.v2.tensors import DTYPES, InferRequest, InferResponse, Tensor

Array = np.ndarray[Any, Any]

# Largest batch preprocessed on the event loop when no other request is in flight (~5 ms an image).
INLINE_PREPROCESS_MAX = 1


def softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


class VisionDataPlane(LocalDataPlane):
    def __init__(self, config: V2Config, backends: dict[str, InferBackend], preprocess: Callable[[list[bytes]], Array], model_dir: Path) -> None:
        super().__init__("switchyard-worker-vision", model_dir)
        self.backends = backends
        self.preprocess = preprocess
        self._in_flight = 0
        self._levels: dict[str, list[list[Step]]] = {}
        self.update(config)

    def update(self, config: V2Config, new_backends: dict[str, InferBackend] | None = None) -> None:
        """Serve the models of a (re)loaded catalog. Backends are only ever added: a job accepted
        before a reload may still run on one that the new catalog no longer names."""
        models = {m.name: m for m in config.for_domain("vision")}
        for m in models.values():
            for s in m.steps:
                if s.op == "topk":
                    self.labels(str(s.params.get("labels", "imagenet_labels.txt")))
        self.backends.update(new_backends or {})
        self.serve(models)
        self._levels = {name: m.levels() for name, m in models.items()}

    # ------------------------------------------------------------ health

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        m = self.model(name, version)
        used = {s.backend for s in m.steps if s.backend}
        return all(await asyncio.gather(*(self.backends[b].ready() for b in used)))

    async def ready(self) -> bool:
        return all(await asyncio.gather(*(b.ready() for b in self.backends.values())))

    # ------------------------------------------------------------ inference

    def _inputs(self, m: V2Model, tensors: list[Tensor]) -> dict[str, Array]:
        values: dict[str, Array] = {}
        batch: int | None = None
        for t in tensors:
            spec = m.input(t.name)
            if spec is None:
                raise V2Error(400, f"model '{m.name}' has no input '{t.name}' (inputs: {', '.join(i.name for i in m.inputs)})")
            if t.name in values:
                raise V2Error(400, f"input '{t.name}' given twice")
            if t.datatype != spec.datatype:
                raise V2Error(400, f"input '{t.name}': datatype {t.datatype}, model '{m.name}' expects {spec.datatype}")
            shape = t.shape
            if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)):
                raise V2Error(400, f"input '{t.name}': shape {shape} does not match {spec.shape}")
            if not 1 <= shape[0] <= m.max_batch_size:
                raise V2Error(400, f"input '{t.name}': batch of {shape[0]}; model '{m.name}' takes 1 to {m.max_batch_size}")
            if batch is not None and shape[0] != batch:
                raise V2Error(400, f"inputs disagree on the batch size ({batch} vs {shape[0]})")
            batch = shape[0]
            values[t.name] = t.data
        missing = [i.name for i in m.inputs if i.name not in values]
        if missing:
            raise V2Error(400, f"model '{m.name}' needs input(s) {', '.join(missing)}")
        return values

    async def _step(self, s: Step, values: dict[str, Array], params: dict[str, Any]) -> list[Array]:
        args = [values[i] for i in s.inputs]
        if s.op == "preprocess":
            images = [bytes(b) for b in args[0].reshape(-1)]
            if self._in_flight == 1 and len(images) <= INLINE_PREPROCESS_MAX:
                # Nothing else to serve meanwhile, and DALI runs one batch at a time anyway: skip the
                # hand-off to a thread and back (~0.3 ms of a 2 ms overhead budget, docs/vision.md).
                return [self.preprocess(images)]
            return [await asyncio.to_thread(self.preprocess, images)]
        if s.op == "infer":
            assert s.backend is not None
            return [await self.backends[s.backend].infer(np.ascontiguousarray(args[0], dtype=np.float32))]
        if s.op == "average_probs":
            return [np.mean([softmax(a) for a in args], axis=0).astype(np.float32)]
        if s.op == "topk":
            labels = self.labels(str(s.params.get("labels", "imagenet_labels.txt")))
            probs = softmax(args[0]) if s.params.get("softmax", True) else args[0]
            k = params.get("top_k", 5)
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= probs.shape[-1]:
                raise V2Error(400, f"parameter top_k must be an integer from 1 to {probs.shape[-1]}, got {k!r}")
            top = np.argpartition(-probs, k - 1, axis=-1)[:, :k]  # the k best, unordered...
            order = np.argsort(-np.take_along_axis(probs, top, axis=-1), axis=-1, kind="stable")  # ...then sorted
            idx = np.take_along_axis(top, order, axis=-1)
            return [labels[idx], np.take_along_axis(probs, idx, axis=-1).astype(np.float32)]
        raise V2Error(500, f"step {s.name}: op {s.op} is not implemented by the vision worker")

    async def execute(self, req: InferRequest, m: V2Model) -> InferResponse:
        values = self._inputs(m, req.inputs)
        wanted = [o.name for o in req.outputs] if req.outputs else [o.name for o in m.outputs]
        for name in wanted:
            if m.output(name) is None:
                raise V2Error(400, f"model '{m.name}' has no output '{name}' (outputs: {', '.join(o.name for o in m.outputs)})")
        params = {**m.parameters, **req.parameters}
        self._in_flight += 1
        try:
            # The served declaration's levels are computed once; a job's snapshot computes its own.
            for level in self._levels[m.name] if self.models.get(m.name) is m else m.levels():
                if len(level) == 1:  # the common case: no gather bookkeeping
                    results = [await self._step(level[0], values, params)]
                else:
                    results = await asyncio.gather(*(self._step(s, values, params) for s in level))
                for s, outs in zip(level, results, strict=True):
                    values.update(zip(s.outputs, outs, strict=True))
        finally:
            self._in_flight -= 1
        outputs = []
        for name in wanted:
            spec = m.output(name)
            assert spec is not None
            data = values[name]
            outputs.append(Tensor(name, spec.datatype, data if spec.datatype == "BYTES" else data.astype(DTYPES[spec.datatype], copy=False)))
        return InferResponse(model=m.name, version=req.version or m.versions[-1], outputs=outputs, id=req.id)

"""The vision worker's KServe V2 data plane: validate a request against its model, run the model's
steps (see switchyard.common.v2.config), answer with the requested outputs.

A ``StepPlane`` (switchyard.common.v2.step_plane and local_plane: request decoding and checks,
classification, statistics, catalog reloads), served by the shared REST and gRPC front ends; the
durable-lane activity calls the same ``infer``: one code path for both lanes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.config import Step, V2Config, V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.step_plane import StepPlane
from switchyard.common.v2.tensors import InferRequest, InferResponse

Array = np.ndarray[Any, Any]

# Largest batch preprocessed on the event loop when no other request is in flight (~5 ms an image).
INLINE_PREPROCESS_MAX = 1


def softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


class VisionDataPlane(StepPlane):
    def __init__(self, config: V2Config, backends: dict[str, InferBackend], preprocess: Callable[[list[bytes]], Array], model_dir: Path) -> None:
        super().__init__("switchyard-worker-vision", "vision", backends, model_dir)
        self.preprocess = preprocess
        # One thread of its own for preprocessing, not the loop's default executor (up to 6 threads
        # here): DALI runs one batch at a time anyway (its lock), and a batch's buffers (decoded
        # images, the [N,3,224,224] output: 2.4 MB for a 4-image job) come from the malloc arena of
        # the thread that ran it and stay cached there once freed: spread over every executor
        # thread's arena, the worker's RSS crept up with each job.
        self._preprocess_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess")
        self._in_flight = 0
        self.update(config)

    def update(self, config: V2Config, new_backends: dict[str, InferBackend] | None = None) -> None:
        """The topk steps' labels files are read first: a missing one refuses the catalog."""
        for m in config.for_domain("vision"):
            for s in m.steps:
                if s.op == "topk":
                    self.labels(str(s.params.get("labels", "imagenet_labels.txt")))
        super().update(config, new_backends)

    # ------------------------------------------------------------ inference

    async def _step(self, s: Step, values: dict[str, Array], params: dict[str, Any]) -> list[Array]:
        args = [values[i] for i in s.inputs]
        if s.op == "preprocess":
            images = [bytes(b) for b in args[0].reshape(-1)]
            if self._in_flight == 1 and len(images) <= INLINE_PREPROCESS_MAX:
                # Nothing else to serve meanwhile, and DALI runs one batch at a time anyway: skip the
                # hand-off to a thread and back (~0.3 ms of a 2 ms overhead budget, docs/vision.md).
                return [self.preprocess(images)]
            return [await asyncio.get_running_loop().run_in_executor(self._preprocess_thread, self.preprocess, images)]
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
        values = self.inputs(m, req.inputs)
        wanted = self.wanted_outputs(m, req)
        params = {**m.parameters, **req.parameters}
        self._in_flight += 1
        try:
            for level in self.levels(m):
                if len(level) == 1:  # the common case: no gather bookkeeping
                    results = [await self._step(level[0], values, params)]
                else:
                    results = await asyncio.gather(*(self._step(s, values, params) for s in level))
                for s, outs in zip(level, results, strict=True):
                    values.update(zip(s.outputs, outs, strict=True))
        finally:
            self._in_flight -= 1
        return self.response(m, req, wanted, values)

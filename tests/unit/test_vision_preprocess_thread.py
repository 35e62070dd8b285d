"""The vision data plane preprocesses on one thread of its own (not the event loop's default
executor): a batch's buffers then come from one malloc arena, whatever the concurrency."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.common.v2.config import V2Config
from switchyard.common.v2.tensors import InferRequest, Tensor
from switchyard.worker_vision.dataplane import VisionDataPlane

CONFIG = V2Config.model_validate({
    "backends": {"net": {"engine": "onnxruntime", "model": "m.onnx"}},
    "models": [
        {"name": "classify", "domain": "vision", "max_batch_size": 8,
         "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
         "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
         "steps": [{"name": "decode", "op": "preprocess", "inputs": ["image"], "outputs": ["pixels"]},
                   {"name": "net", "op": "infer", "backend": "net", "inputs": ["pixels"], "outputs": ["logits"]}]},
    ],
})


class Net:
    name = "net"

    async def infer(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.zeros((batch.shape[0], 3), dtype=np.float32)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def test_preprocessing_runs_on_one_dedicated_thread(tmp_path: Path) -> None:
    threads: set[int] = set()

    def preprocess(images: list[bytes]) -> np.ndarray[Any, Any]:
        threads.add(threading.get_ident())
        time.sleep(0.01)
        return np.zeros((len(images), 4), dtype=np.float32)

    plane = VisionDataPlane(CONFIG, {"net": Net()}, preprocess, tmp_path)

    async def run() -> None:
        images = np.empty(2, dtype=object)
        images[:] = [b"a", b"b"]
        reqs = [InferRequest(model="classify", inputs=[Tensor("image", "BYTES", images)]) for _ in range(8)]
        outs = await asyncio.gather(*(plane.infer(r) for r in reqs))
        assert all(o.outputs[0].data.shape == (2, 3) for o in outs)

    asyncio.run(run())
    assert len(threads) == 1 and threading.get_ident() not in threads

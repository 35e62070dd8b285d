"""JPEG/PNG bytes → the network's input tensor, with NVIDIA DALI.

One pipeline: decode (RGB), resize the shorter side to 256, centre-crop 224, ``(x - 127) / 128``,
CHW, FP32. On a machine with a CUDA device DALI decodes on the GPU (``mixed``) and resizes there;
otherwise everything runs on the CPU. The choice is made once, at start-up, and logged.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Literal

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.tensors import TensorListGPU

from switchyard.common.v2.errors import V2Error

log = logging.getLogger("switchyard.worker_vision")

SHORTER, CROP = 256, 224
MEAN, STD = [127.0] * 3, [128.0] * 3


def cuda_device_count() -> int:
    """CUDA devices visible to this process (0 without a driver)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


class DaliPreprocessor:
    def __init__(self, device: Literal["auto", "cpu", "gpu"] = "auto", max_batch: int = 32, threads: int = 2) -> None:
        gpu = device == "gpu" or (device == "auto" and cuda_device_count() > 0)
        self.device = "gpu" if gpu else "cpu"
        self.max_batch = max_batch

        # Synchronous, unpipelined: one request's images in, its tensor out (no prefetch queue).
        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=0 if gpu else None,
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def pipe() -> Any:
            images = fn.external_source(name="images", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(images, device="mixed" if gpu else "cpu", output_type=types.RGB)
            img = fn.resize(img, resize_shorter=SHORTER)
            return fn.crop_mirror_normalize(img, crop=(CROP, CROP), mean=MEAN, std=STD, dtype=types.FLOAT, output_layout="CHW")

        self._pipe = pipe()
        self._pipe.build()
        # A DALI pipeline runs one batch at a time.
        self._lock = threading.Lock()
        log.info("DALI preprocessing on %s", self.device.upper(), extra={"fields": {"device": self.device, "threads": threads}})

    def __call__(self, images: list[bytes]) -> np.ndarray[Any, Any]:
        if not images:
            return np.zeros((0, 3, CROP, CROP), dtype=np.float32)
        if len(images) > self.max_batch:
            raise V2Error(400, f"{len(images)} images in one request; at most {self.max_batch}")
        with self._lock:
            self._pipe.feed_input("images", [np.frombuffer(b, dtype=np.uint8) for b in images])
            try:
                (out,) = self._pipe.run()
            except RuntimeError as e:
                # The decoder names the sample it could not read; keep the first line.
                raise V2Error(400, f"an image could not be decoded: {str(e).strip().splitlines()[0][:300]}") from None
            if isinstance(out, TensorListGPU):
                out = out.as_cpu()
            return np.asarray(out.as_array(), dtype=np.float32)

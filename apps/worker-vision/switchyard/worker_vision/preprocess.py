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


# File signatures DALI's decoder reads: JPEG, PNG, BMP, TIFF (both byte orders), JPEG 2000, WebP.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  \r\n")


def known_format(data: bytes) -> bool:
    return data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class DaliPreprocessor:
    def __init__(self, device: Literal["auto", "cpu", "gpu"] = "auto", max_batch: int = 32, threads: int = 2) -> None:
        gpu = device == "gpu" or (device == "auto" and cuda_device_count() > 0)
        self.device = "gpu" if gpu else "cpu"
        self.max_batch = max_batch

        # Synchronous, unpipelined: one request's images in, its tensor out (no prefetch queue).
        @pipeline_def(batch_size=max_batch, num_threads=threads, device_id=0 if gpu else None,  # type: ignore[untyped-decorator]
                      exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        def pipe() -> Any:
            images = fn.external_source(name="images", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(images, device="mixed" if gpu else "cpu", output_type=types.RGB)
            img = fn.resize(img, resize_shorter=SHORTER)
            return fn.crop_mirror_normalize(img, crop=(CROP, CROP), mean=MEAN, std=STD, dtype=types.FLOAT, output_layout="CHW")

        self._define = pipe
        self._pipe = self._build()
        # A DALI pipeline runs one batch at a time.
        self._lock = threading.Lock()
        log.info("DALI preprocessing on %s", self.device.upper(), extra={"fields": {"device": self.device, "threads": threads}})

    def _build(self) -> Any:
        pipe = self._define()
        pipe.build()
        return pipe

    def _run(self, images: list[bytes]) -> np.ndarray[Any, Any]:
        self._pipe.feed_input("images", [np.frombuffer(b, dtype=np.uint8) for b in images])
        (out,) = self._pipe.run()
        if isinstance(out, TensorListGPU):
            out = out.as_cpu()
        return np.asarray(out.as_array(), dtype=np.float32)

    def __call__(self, images: list[bytes]) -> np.ndarray[Any, Any]:
        if not images:
            return np.zeros((0, 3, CROP, CROP), dtype=np.float32)
        if len(images) > self.max_batch:
            raise V2Error(400, f"{len(images)} images in one request; at most {self.max_batch}")
        for i, img in enumerate(images):
            if not known_format(img):
                raise V2Error(400, f"image {i} could not be decoded: not a JPEG, PNG, BMP, TIFF, JPEG 2000 or WebP file")
        with self._lock:
            try:
                return self._run(images)
            except RuntimeError:
                # A failed run leaves the pipeline unusable: rebuild it, then find the culprit.
                self._pipe = self._build()
                bad = self._first_bad(images)
                raise V2Error(400, f"image {bad} could not be decoded: corrupt or truncated") from None

    def _first_bad(self, images: list[bytes]) -> int:
        for i, img in enumerate(images):
            try:
                self._run([img])
            except RuntimeError:
                self._pipe = self._build()
                return i
        return 0

"""Vision worker: the ``vision`` task queue (durable lane) and KServe V2 over HTTP and gRPC
(realtime lane), all on one data plane: DALI preprocessing, Triton / onnxruntime backends."""

from __future__ import annotations

import logging
import os

import tritonclient.http.aio as triton_http
import uvloop

from switchyard.common import worker_main
from switchyard.common.catalog import CatalogHolder
from switchyard.common.gpu import GpuReadings, keep_reading
from switchyard.common.http1 import Http1Client
from switchyard.common.payload_codec import KeyRing
from switchyard.common.v2.backends import InferBackend, make_backends
from switchyard.common.v2.config import Backend
from switchyard.common.v2.realtime import follow_catalog, front_ends
from switchyard.common.v2.triton_shm import ShmPool
from switchyard.worker_vision.activities import VisionActivities
from switchyard.worker_vision.counting import CountingVisionPlane
from switchyard.worker_vision.preprocess import DaliPreprocessor
from switchyard.worker_vision.settings import VisionSettings
from switchyard.worker_vision.workflows import VisionJobWorkflow

log = logging.getLogger("switchyard.worker_vision")


async def main(settings: VisionSettings, catalog: CatalogHolder, keys: KeyRing) -> None:
    config = catalog.current.v2
    triton = triton_http.InferenceServerClient(settings.triton_url, conn_timeout=settings.triton_timeout_s)
    shm = ShmPool(triton, f"switchyard-{settings.task_queue}-{settings.vision_http_port}", settings.triton_shm_slots, settings.triton_shm_slot_bytes)
    await shm.open()
    triton_infer = Http1Client.for_url(settings.triton_url, timeout_s=settings.triton_timeout_s)

    def open_backends(declared: dict[str, Backend]) -> dict[str, InferBackend]:
        return make_backends(declared, settings.vision_model_dir, triton, triton_infer, shm)

    backends = open_backends(config.backends_for("vision"))
    max_batch = max((m.max_batch_size for m in config.for_domain("vision")), default=32)
    preprocess = DaliPreprocessor(settings.vision_preprocess_device, max_batch=max_batch, threads=settings.vision_preprocess_threads)
    plane = CountingVisionPlane(config, backends, preprocess, settings.vision_model_dir)
    follow_catalog(catalog, plane, "vision", open_backends)

    await worker_main.serve(
        settings, catalog, keys, log, workflows=[VisionJobWorkflow],
        activities=lambda books: [VisionActivities(books, plane, settings.vision_job_chunk).classify],
        started={"models": sorted(plane.models), "preprocess": preprocess.device},
        front_ends=front_ends(plane, settings.vision_host, settings.vision_http_port, settings.vision_grpc_port, settings.max_body_bytes),
        background=[keep_reading(GpuReadings())],  # this host's GPUs (NVML), if any
    )
    await shm.close()
    await triton_infer.close()
    await triton.close()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog. With
    # --check (packaging smoke test), every import above resolved (DALI, onnxruntime, tritonclient).
    worker_main.run("switchyard-worker-vision", VisionSettings(), os.environ, main, runner=uvloop.run)

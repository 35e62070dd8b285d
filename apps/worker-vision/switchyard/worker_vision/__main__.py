"""Vision worker: the ``vision`` task queue (durable lane) and KServe V2 over HTTP and gRPC
(realtime lane), all on one data plane: DALI preprocessing, Triton / onnxruntime backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import tritonclient.http.aio as triton_http
import uvicorn
import uvloop
from temporalio.worker import Worker

from switchyard.common import metrics_page, tracing
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import Catalog, CatalogError, CatalogHolder
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.events import EventBus, make_redis
from switchyard.common.gpu import GpuReadings, keep_reading
from switchyard.common.http1 import Http1Client
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import KeyRing, keys_or_exit
from switchyard.common.temporal import WORKER_OPTIONS, connect
from switchyard.common.v2 import grpc_frontend, rest_frontend
from switchyard.common.v2.backends import make_backends
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
    backends = make_backends(config.backends_for("vision"), settings.vision_model_dir, triton, triton_infer, shm)
    max_batch = max((m.max_batch_size for m in config.for_domain("vision")), default=32)
    preprocess = DaliPreprocessor(settings.vision_preprocess_device, max_batch=max_batch, threads=settings.vision_preprocess_threads)
    plane = CountingVisionPlane(config, backends, preprocess, settings.vision_model_dir)

    def serve(new: Catalog) -> None:
        """A reloaded catalog: new backends are opened before its models are served."""
        try:
            added = make_backends({n: b for n, b in new.v2.backends_for("vision").items() if n not in plane.backends}, settings.vision_model_dir, triton, triton_infer, shm)
            plane.update(new.v2, added)
        except FileNotFoundError as e:
            raise CatalogError(str(e)) from None

    catalog.listeners.append(serve)

    metrics_page.serve(settings.metrics_port, settings.metrics_host)
    gpus = asyncio.create_task(keep_reading(GpuReadings()))  # this host's GPUs (NVML), if any
    client = await connect(settings, keys, metrics_host=settings.metrics_host, metrics_port=settings.temporal_metrics_port)
    db = make_engine(settings.postgres_dsn)
    redis = make_redis(settings.redis_url)
    books = JobBookkeeping(JobStore(db), EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen), keys)
    vision = VisionActivities(books, plane, settings.vision_job_chunk)
    worker = Worker(client, task_queue=settings.task_queue, workflows=[VisionJobWorkflow], activities=[vision.classify, books.finish],
                    max_concurrent_activities=settings.max_concurrent_activities, **WORKER_OPTIONS)

    v2_app = rest_frontend.create_app(plane, settings.max_body_bytes, grpc_frontend.tunnel(plane))
    http = uvicorn.Server(uvicorn.Config(v2_app, host=settings.vision_host, port=settings.vision_http_port, log_level="warning", access_log=False, lifespan="off"))
    rpc = await grpc_frontend.start_server(plane, settings.vision_host, settings.vision_grpc_port, settings.max_body_bytes)
    http_task = asyncio.create_task(http.serve())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    catalog.reload_on_sighup()
    while not http.started:
        await asyncio.sleep(0.05)
    log.info("worker started", extra={"fields": {"task_queue": settings.task_queue, "models": sorted(plane.models), "preprocess": preprocess.device,
                                                  "v2_http": f"{settings.vision_host}:{settings.vision_http_port}",
                                                  "v2_grpc": f"{settings.vision_host}:{settings.vision_grpc_port}"}})
    async with worker:
        await stop.wait()
        log.info("shutting down: no new tasks, in-flight ones get the grace period")
    gpus.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gpus
    http.should_exit = True
    await http_task
    await rpc.stop(grace=2)
    await shm.close()
    await triton_infer.close()
    await triton.close()
    await redis.aclose()
    await db.dispose()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog.
    settings = VisionSettings()
    if "--check" in sys.argv[1:]:
        # Packaging smoke test: every import resolved above (DALI, onnxruntime, tritonclient); settings parse.
        print(f"switchyard-worker-vision ok: task queue {settings.task_queue!r}")
    else:
        setup_logging(settings.log_level)
        catalog = CatalogHolder.load_or_exit("switchyard-worker-vision", settings, os.environ)
        keys = keys_or_exit("switchyard-worker-vision", settings)  # no key, no start: nothing goes to Temporal in clear
        tracing.setup_tracing(settings, "switchyard-worker-vision")
        try:
            uvloop.run(main(settings, catalog, keys))
        finally:
            tracing.shutdown_tracing()

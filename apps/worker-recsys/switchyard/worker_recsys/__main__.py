"""Recsys worker: the ``recsys`` task queue (durable lane) and KServe V2 over HTTP and gRPC
(realtime lane) plus ``POST /recsys/events``, all on one data plane: Feast online features,
retrieval in process, the ranker on onnxruntime or Triton.

Runs from the recsys venv (Feast needs numpy 2): ``.cache/switchyard/recsys/venv/bin/python -m
switchyard.worker_recsys`` with the repository's source roots on PYTHONPATH."""

from __future__ import annotations

import asyncio
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
from switchyard.common.breaker import Breaker
from switchyard.common.catalog import Catalog, CatalogError, CatalogHolder
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.events import EventBus, make_redis
from switchyard.common.http1 import Http1Client
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import KeyRing, keys_or_exit
from switchyard.common.temporal import WORKER_OPTIONS, connect
from switchyard.common.v2 import grpc_frontend, rest_frontend
from switchyard.common.v2.backends import InferBackend, make_backends
from switchyard.common.v2.config import Backend
from switchyard.worker_recsys import events
from switchyard.worker_recsys.activities import RecsysActivities
from switchyard.worker_recsys.dataplane import RecsysDataPlane, RecsysModels
from switchyard.worker_recsys.features import FeastFeatures
from switchyard.worker_recsys.settings import RecsysSettings
from switchyard.worker_recsys.source import StoreGuard
from switchyard.worker_recsys.workflows import RecsysJobWorkflow

log = logging.getLogger("switchyard.worker_recsys")


async def main(settings: RecsysSettings, catalog: CatalogHolder, keys: KeyRing) -> None:
    config = catalog.current.v2
    models = RecsysModels.load(settings.recsys_model_dir)
    triton = triton_http.InferenceServerClient(settings.triton_url, conn_timeout=settings.triton_timeout_s)
    triton_infer = Http1Client.for_url(settings.triton_url, timeout_s=settings.triton_timeout_s)
    # The ranker takes ~0.2 ms for 100 candidates on one thread: run on the event loop, since a hand-off
    # to a thread costs more (0.2-0.4 ms, far more on a busy machine). Its input is ~4 KB (100 x 10
    # FP32): to Triton as an HTTP body, no shared memory.
    def open_backends(declared: dict[str, Backend]) -> dict[str, InferBackend]:
        return make_backends(declared, settings.recsys_model_dir, triton, triton_infer, onnx_threads=1, onnx_inline=True)

    backends = open_backends(config.backends_for("recsys"))
    source = await FeastFeatures.open(settings.feast_repo, settings.feast_env(), len(models.item_embeddings),
                                      timeout_s=settings.feast_timeout_s, push_timeout_s=settings.feast_push_timeout_s,
                                      refresh_s=settings.recsys_item_refresh_s,
                                      guard=StoreGuard(Breaker("feast", fail_max=settings.feast_breaker_fail_max, reset_timeout_s=settings.feast_breaker_reset_s)))
    plane = RecsysDataPlane(config, backends, source, models, settings.recsys_model_dir, retrieve=settings.recsys_retrieve)

    def serve(new: Catalog) -> None:
        """A reloaded catalog: new backends are opened before its models are served."""
        try:
            added = open_backends({n: b for n, b in new.v2.backends_for("recsys").items() if n not in plane.backends})
            plane.update(new.v2, added)
        except FileNotFoundError as e:
            raise CatalogError(str(e)) from None

    catalog.listeners.append(serve)

    metrics_page.serve(settings.metrics_port, settings.metrics_host)
    client = await connect(settings, keys, metrics_host=settings.metrics_host, metrics_port=settings.temporal_metrics_port)
    db = make_engine(settings.postgres_dsn)
    redis = make_redis(settings.redis_url)
    books = JobBookkeeping(JobStore(db), EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen), keys)
    recsys = RecsysActivities(books, plane, settings.recsys_job_chunk)
    worker = Worker(client, task_queue=settings.task_queue, workflows=[RecsysJobWorkflow], activities=[recsys.rank, books.finish],
                    max_concurrent_activities=settings.max_concurrent_activities, **WORKER_OPTIONS)

    v2_app = rest_frontend.create_app(plane, settings.max_body_bytes, grpc_frontend.tunnel(plane), extra_routes=events.routes(plane))
    http = uvicorn.Server(uvicorn.Config(v2_app, host=settings.recsys_host, port=settings.recsys_http_port, log_level="warning", access_log=False, lifespan="off"))
    rpc = await grpc_frontend.start_server(plane, settings.recsys_host, settings.recsys_grpc_port, settings.max_body_bytes)
    http_task = asyncio.create_task(http.serve())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    catalog.reload_on_sighup()
    while not http.started:
        await asyncio.sleep(0.05)
    log.info("worker started", extra={"fields": {"task_queue": settings.task_queue, "models": sorted(plane.models), "items": len(source.items),
                                                  "v2_http": f"{settings.recsys_host}:{settings.recsys_http_port}",
                                                  "v2_grpc": f"{settings.recsys_host}:{settings.recsys_grpc_port}"}})
    async with worker:
        await stop.wait()
        log.info("shutting down: no new tasks, in-flight ones get the grace period")
    http.should_exit = True
    await http_task
    await rpc.stop(grace=2)
    await source.close()
    await triton_infer.close()
    await triton.close()
    await redis.aclose()
    await db.dispose()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog.
    settings = RecsysSettings()
    if "--check" in sys.argv[1:]:
        # Packaging smoke test: every import resolved above (Feast, onnxruntime, tritonclient); settings parse.
        print(f"switchyard-worker-recsys ok: task queue {settings.task_queue!r}")
    else:
        setup_logging(settings.log_level)
        catalog = CatalogHolder.load_or_exit("switchyard-worker-recsys", settings, os.environ)
        keys = keys_or_exit("switchyard-worker-recsys", settings)  # no key, no start: nothing goes to Temporal in clear
        tracing.setup_tracing(settings, "switchyard-worker-recsys")
        try:
            uvloop.run(main(settings, catalog, keys))
        finally:
            tracing.shutdown_tracing()

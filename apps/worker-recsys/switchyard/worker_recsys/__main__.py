"""Recsys worker: the ``recsys`` task queue (durable lane) and KServe V2 over HTTP and gRPC
(realtime lane) plus ``POST /recsys/events``, all on one data plane: Feast online features,
retrieval in process, the ranker on onnxruntime or Triton.

Runs from the recsys venv (Feast needs numpy 2): ``.cache/switchyard/recsys/venv/bin/python -m
switchyard.worker_recsys`` with the repository's source roots on PYTHONPATH."""

from __future__ import annotations

import logging
import os

import tritonclient.http.aio as triton_http
import uvloop

from switchyard.common import worker_main
from switchyard.common.breaker import Breaker
from switchyard.common.catalog import CatalogHolder
from switchyard.common.http1 import Http1Client
from switchyard.common.payload_codec import KeyRing
from switchyard.common.v2.backends import InferBackend, make_backends
from switchyard.common.v2.config import Backend
from switchyard.common.v2.realtime import follow_catalog, front_ends
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
    follow_catalog(catalog, plane, "recsys", open_backends)

    await worker_main.serve(
        settings, catalog, keys, log, workflows=[RecsysJobWorkflow],
        activities=lambda books: [RecsysActivities(books, plane, settings.recsys_job_chunk).rank],
        started={"models": sorted(plane.models), "items": len(source.items)},
        front_ends=front_ends(plane, settings.recsys_host, settings.recsys_http_port, settings.recsys_grpc_port, settings.max_body_bytes,
                              extra_routes=events.routes(plane)),
    )
    await source.close()
    await triton_infer.close()
    await triton.close()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog. With
    # --check (packaging smoke test), every import above resolved (Feast, onnxruntime, tritonclient).
    worker_main.run("switchyard-worker-recsys", RecsysSettings(), os.environ, main, runner=uvloop.run)

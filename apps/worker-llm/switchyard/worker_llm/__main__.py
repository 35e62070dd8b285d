"""LLM worker: polls the ``llm`` task queue and streams generations from the configured engines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import httpx
from temporalio.worker import Worker

from switchyard.common import metrics_page, tracing
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.events import EventBus, make_redis
from switchyard.common.gpu import GpuReadings, keep_reading
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import KeyRing, keys_or_exit
from switchyard.common.pii import PiiGuard
from switchyard.common.request_log import send_request_id
from switchyard.common.temporal import WORKER_OPTIONS, connect
from switchyard.worker_llm.activities import LlmActivities
from switchyard.worker_llm.probe import keep_probing
from switchyard.worker_llm.settings import WorkerSettings
from switchyard.worker_llm.workflows import LlmJobWorkflow

log = logging.getLogger("switchyard.worker_llm")


def _engine_hooks() -> dict[str, list[Any]]:
    hooks = tracing.httpx_event_hooks()
    return {**hooks, "request": [*hooks.get("request", []), send_request_id]}


async def main(settings: WorkerSettings, catalog: CatalogHolder, keys: KeyRing) -> None:
    metrics_page.serve(settings.metrics_port, settings.metrics_host)
    client = await connect(settings, keys, metrics_host=settings.metrics_host, metrics_port=settings.temporal_metrics_port)
    db = make_engine(settings.postgres_dsn)
    redis = make_redis(settings.redis_url)
    # Results are stored redacted (switchyard.common.pii); the model loads now, not on the first job.
    pii = PiiGuard(settings)
    books = JobBookkeeping(JobStore(db), EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen), keys, pii=pii)
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.engine_timeout_s, connect=5.0), limits=httpx.Limits(max_connections=256),
                             event_hooks=_engine_hooks())  # engines see the attempt's traceparent and X-Request-Id
    llm = LlmActivities(books, catalog, http)
    # Gauges refreshed in the background: each catalog endpoint's health, this host's GPUs (NVML).
    background = [asyncio.create_task(keep_probing(catalog, http, settings.engine_probe_every_s)), asyncio.create_task(keep_reading(GpuReadings()))]
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[LlmJobWorkflow],
        activities=[llm.generate, books.finish],
        max_concurrent_activities=settings.max_concurrent_activities,
        **WORKER_OPTIONS,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    catalog.reload_on_sighup()
    log.info("worker started", extra={"fields": {"task_queue": settings.task_queue, "models": [m.name for m in catalog.current.registry.models]}})
    async with worker:
        await stop.wait()
        log.info("shutting down: no new tasks, in-flight ones get the grace period")
    for task in background:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await http.aclose()
    await redis.aclose()
    await db.dispose()
    pii.close()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog.
    settings = WorkerSettings()
    if "--check" in sys.argv[1:]:
        # Packaging smoke test: every import resolved above; settings parse.
        print(f"switchyard-worker-llm ok: task queue {settings.task_queue!r}")
    else:
        setup_logging(settings.log_level)
        catalog = CatalogHolder.load_or_exit("switchyard-worker-llm", settings, os.environ)
        keys = keys_or_exit("switchyard-worker-llm", settings)  # no key, no start: nothing goes to Temporal in clear
        tracing.setup_tracing(settings, "switchyard-worker-llm")
        try:
            asyncio.run(main(settings, catalog, keys))
        finally:
            tracing.shutdown_tracing()

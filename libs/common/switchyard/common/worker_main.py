"""The skeleton every domain worker's entry point shares (``python -m switchyard.worker_*``).

``run`` is the process: ``--check`` (the packaging smoke test), else logs, the model catalog, the
payload keys and traces set up before the worker's ``main`` runs. ``serve`` is the durable lane
every worker runs, in this order: its /metrics page, the Temporal client, PostgreSQL and Redis (job
bookkeeping), the Temporal worker, background tasks, the realtime front ends if any; it logs
"worker started" once they listen. It drains (switchyard.common.drain) on SIGINT/SIGTERM or, with
``spot_metadata_url`` set, a spot interruption notice: polling stops, in-flight activities hand
their attempts back at once (another worker resumes them from their checkpoint), the realtime
front ends finish the requests in flight; it returns once everything it opened is closed. What the worker opened itself (engine
clients, data planes) it closes after ``serve`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import httpx
from temporalio.worker import Worker

from switchyard.common import metrics_page, temporal, tracing
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.catalog_changes import ChangeFollower, ChangeStore
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.drain import Drain
from switchyard.common.events import EventBus, make_redis
from switchyard.common.imds import ImdsPoller
from switchyard.common.logs import setup_logging
from switchyard.common.payload_codec import KeyRing, keys_or_exit
from switchyard.common.pii import PiiGuard
from switchyard.common.retry_jitter import JitteredRetries
from switchyard.common.temporal import WORKER_OPTIONS, connect
from switchyard.common.worker_settings import DomainWorkerSettings

S = TypeVar("S", bound=DomainWorkerSettings)
Main = Callable[[S, CatalogHolder, KeyRing], Coroutine[Any, Any, None]]


def run(process: str, settings: S, env: Mapping[str, str], main: Main[S], *,
        runner: Callable[[Coroutine[Any, Any, None]], object] = asyncio.run) -> None:
    """The worker process ``process`` (e.g. ``switchyard-worker-vision``). ``settings`` and ``env``
    (the ``${VAR}`` values of the catalog) are read by the caller, the one place that reads the
    environment. ``runner``: the event loop (``uvloop.run`` for the latency-bound V2 workers)."""
    if "--check" in sys.argv[1:]:
        # Packaging smoke test: every import of the caller resolved; settings parse.
        print(f"{process} ok: task queue {settings.task_queue!r}")
        return
    setup_logging(settings.log_level)
    catalog = CatalogHolder.load_or_exit(process, settings, env)
    keys = keys_or_exit(process, settings)  # no key, no start: nothing goes to Temporal in clear
    tracing.setup_tracing(settings, process)
    try:
        runner(main(settings, catalog, keys))
    finally:
        tracing.shutdown_tracing()


async def serve(settings: DomainWorkerSettings, catalog: CatalogHolder, keys: KeyRing, log: logging.Logger, *,
                workflows: Sequence[type], activities: Callable[[JobBookkeeping], Sequence[Callable[..., Any]]],
                started: Mapping[str, Any], front_ends: AbstractAsyncContextManager[Mapping[str, str]] | None = None,
                background: Sequence[Coroutine[Any, Any, None]] = (), pii: PiiGuard | None = None) -> None:
    """Run the worker until it drains (SIGINT/SIGTERM, spot interruption notice). ``activities``:
    the domain's, given the job bookkeeping (``job.finish`` is added); ``started``: fields of the "worker started" line (the front ends add
    their addresses); ``front_ends``: the realtime lane, entered once the Temporal worker exists and
    left after it stopped; ``background``: tasks cancelled at shutdown (e.g. gauges' refreshers);
    ``pii``: results stored redacted (switchyard.common.pii)."""
    metrics_page.serve(settings.metrics_port, settings.metrics_host)
    client = await connect(settings, keys, metrics_host=settings.metrics_host, metrics_port=settings.temporal_metrics_port)
    db = make_engine(settings.postgres_dsn)
    redis = make_redis(settings.redis_url)
    books = JobBookkeeping(JobStore(db), EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen), keys, pii=pii,
                           model_names=lambda: catalog.current.names)
    worker = Worker(client, task_queue=settings.task_queue, workflows=list(workflows), activities=[*activities(books), books.finish],
                    max_concurrent_activities=settings.max_concurrent_activities, interceptors=[JitteredRetries()], **WORKER_OPTIONS)
    # Promotions and rollbacks (docs/shadow.md): applied before the first task, then followed.
    follower = ChangeFollower(ChangeStore(db), catalog)
    await follower.sync_or_log()
    tasks = [asyncio.create_task(c) for c in background] + [asyncio.create_task(follower.run())]
    drain = Drain()
    drain.on_signals(asyncio.get_running_loop())
    imds_http = httpx.AsyncClient(timeout=httpx.Timeout(2.0)) if settings.spot_metadata_url else None
    if imds_http is not None:
        tasks.append(asyncio.create_task(drain.watch(ImdsPoller(settings.spot_metadata_url, settings.spot_poll_interval_s, imds_http))))
    catalog.reload_on_sighup()
    async with front_ends or contextlib.nullcontext({}) as addresses:
        log.info("worker started", extra={"fields": {"task_queue": settings.task_queue, **started, **addresses}})
        async with worker:
            reason = await drain.wait()
            began, before = time.monotonic(), temporal.handed_back()
            log.info("drain started: polling stops, in-flight activities are handed back, realtime requests finish",
                     extra={"fields": {"reason": reason}})
        # Leaving the block shut the worker down: heartbeating() activities handed their attempts back
        # at once, the others (quick bookkeeping) had the grace period.
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Leaving the front ends' block: they took no new requests and finished those in flight.
    log.info("drain finished", extra={"fields": {"reason": reason, "handed_back": temporal.handed_back() - before,
                                                 "duration_s": round(time.monotonic() - began, 3)}})
    if imds_http is not None:
        await imds_http.aclose()
    await redis.aclose()
    await db.dispose()

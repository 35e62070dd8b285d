"""Temporal client and worker helpers shared by the API and every worker app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, HeaderCodecBehavior, Interceptor
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from switchyard.common import tracing
from switchyard.common.metrics import QUEUE_BUCKETS
from switchyard.common.payload_codec import KeyRing, data_converter
from switchyard.common.settings import CommonSettings

# How often a running activity reports liveness; a worker that stops (crash, SIGKILL, spot
# reclaim) is noticed after HEARTBEAT_TIMEOUT and its activity rescheduled elsewhere.
HEARTBEAT_EVERY = timedelta(seconds=1)
HEARTBEAT_TIMEOUT = timedelta(seconds=5)

# Worker options every domain worker uses (see docs/architecture.md).
WORKER_OPTIONS: dict[str, Any] = {
    # A dead worker's sticky queue otherwise costs 10 s before another worker takes over.
    "sticky_queue_schedule_to_start_timeout": timedelta(seconds=1),
    # Deliver heartbeats (and so cancellations) within a second.
    "max_heartbeat_throttle_interval": HEARTBEAT_EVERY,
    "default_heartbeat_throttle_interval": HEARTBEAT_EVERY,
    "graceful_shutdown_timeout": timedelta(seconds=5),
}


# The SDK's default buckets start at 0.1 s: schedule-to-start (queue time) gets docs/metrics.md's
# queue-time buckets instead (keys are the SDK's names without the ``temporal_`` prefix).
SDK_BUCKET_OVERRIDES: dict[str, list[float]] = {
    name: [float(b) for b in QUEUE_BUCKETS] for name in ("activity_schedule_to_start_latency", "workflow_task_schedule_to_start_latency")
}

# One Runtime per process (it owns the SDK's threads and its metrics exporter); made by the first connect().
_runtime: Runtime | None = None


def sdk_runtime(metrics_host: str = "127.0.0.1", metrics_port: int = 0) -> Runtime:
    """The process's Temporal Runtime: with ``metrics_port`` (not 0), the SDK's Prometheus page
    (job ``temporal-sdk`` of docs/metrics.md) on metrics_host:metrics_port. Created once; later
    calls return the same Runtime whatever they ask."""
    global _runtime
    if _runtime is None:
        if metrics_port:
            _runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
                bind_address=f"{metrics_host}:{metrics_port}", counters_total_suffix=True, durations_as_seconds=True,
                histogram_bucket_overrides=SDK_BUCKET_OVERRIDES)))
        else:
            _runtime = Runtime.default()
    return _runtime


async def connect(settings: CommonSettings, keys: KeyRing | None = None, *, metrics_host: str = "127.0.0.1", metrics_port: int = 0,
                  interceptors: Sequence[Interceptor] | None = None) -> Client:
    """A client whose every payload (and failure message) is encrypted with the process's keys
    (``keys``, or the settings'); payload_codec.PayloadKeyError without a usable key. The first
    connect of a process creates its Runtime (``sdk_runtime``: the SDK's metrics page on
    ``metrics_port``, 0 = off). ``interceptors``: by default the tracing interceptor when the
    process exports traces (switchyard.common.tracing); a Worker on this client inherits them.
    Headers (the trace context the interceptor carries) go through the codec too: nothing reaches
    the history in clear."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                data_converter=data_converter(keys or KeyRing.from_settings(settings)),
                                header_codec_behavior=HeaderCodecBehavior.CODEC,
                                runtime=sdk_runtime(metrics_host, metrics_port),
                                interceptors=tracing.temporal_interceptors() if interceptors is None else interceptors)


# The error type of an attempt a draining worker hands back (switchyard.common.drain): retryable,
# and retried after DRAIN_RETRY_DELAY whatever the attempt number, so another worker takes it at once.
WORKER_DRAINING = "WorkerDraining"
DRAIN_RETRY_DELAY = timedelta(milliseconds=100)


class _HandedBack:
    """Attempts this process handed back while draining (the drain's closing log line)."""

    count = 0


def handed_back() -> int:
    return _HandedBack.count


@contextlib.asynccontextmanager
async def heartbeating(details: list[Any]) -> AsyncIterator[None]:
    """Heartbeat in the background while the body runs, with the current ``details`` (a checkpoint).

    Covers long silent phases such as prompt prefill, so a live activity never times out.

    It also makes a cancellation stick. Temporal cancels an activity once (``task.cancel()``), and
    Python 3.11's ``asyncio.wait_for`` swallows a cancel that lands while the operation it waits
    for completes (CPython gh-86296, fixed in 3.12). redis-py wraps every socket write in one, so
    now and then the cancel of an activity that publishes tokens was lost and the engine generated
    to the end for a client that had left (issue 9). A body still running one heartbeat after its
    cancellation was requested is cancelled again.

    When the worker drains (SIGTERM, spot interruption: its ``Worker.shutdown()`` sets the SDK's
    worker-shutdown event at once), the body is stopped now rather than after the worker's grace
    period: the latest checkpoint is heartbeated and the attempt fails with a retryable
    ``WorkerDraining`` error, so Temporal hands it to another worker without waiting for a heartbeat
    timeout; that attempt resumes from the checkpoint.
    """
    body = asyncio.current_task()
    draining = False

    async def beat() -> None:
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(HEARTBEAT_EVERY.total_seconds())
            if body is not None and (activity.is_cancelled() or draining):
                body.cancel("Activity cancelled (again: the first cancel was swallowed)")

    async def drain() -> None:
        nonlocal draining
        await activity.wait_for_worker_shutdown()
        draining = True
        activity.heartbeat(*details)  # the checkpoint the next attempt resumes from
        if body is not None:
            body.cancel(WORKER_DRAINING)

    tasks = [asyncio.create_task(beat()), asyncio.create_task(drain())]
    try:
        yield
    except asyncio.CancelledError:
        if not draining or activity.is_cancelled():
            raise  # a real cancellation (the job was cancelled): not handed back
        while body is not None and body.cancelling():
            body.uncancel()  # our cancels, turned into the error below
        _HandedBack.count += 1
        activity.logger.info("attempt handed back: worker draining")
        raise ApplicationError("worker draining: the attempt resumes on another worker", type=WORKER_DRAINING,
                               next_retry_delay=DRAIN_RETRY_DELAY) from None
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

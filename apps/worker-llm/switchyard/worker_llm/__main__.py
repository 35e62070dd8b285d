"""LLM worker: polls the ``llm`` task queue and streams generations from the configured engines."""

from __future__ import annotations

import asyncio
import logging
import os

from switchyard.common import worker_main
from switchyard.common.breaker import BreakerBoard
from switchyard.common.catalog import CatalogHolder
from switchyard.common.engines.generation_client import generation_client
from switchyard.common.gpu import GpuReadings, keep_reading
from switchyard.common.payload_codec import KeyRing
from switchyard.common.pii import PiiGuard
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.worker_llm.activities import LlmActivities
from switchyard.worker_llm.probe import keep_probing
from switchyard.worker_llm.settings import WorkerSettings
from switchyard.worker_llm.shadowing import ShadowOffers
from switchyard.worker_llm.workflows import LlmJobWorkflow

log = logging.getLogger("switchyard.worker_llm")


async def main(settings: WorkerSettings, catalog: CatalogHolder, keys: KeyRing) -> None:
    # Results are stored redacted (switchyard.common.pii); the model loads now, not on the first job.
    pii = PiiGuard(settings)
    http = generation_client(settings.engine_timeout_s)  # engines see the attempt's traceparent and X-Request-Id
    # One circuit breaker per engine endpoint (a cancelled call says nothing about the endpoint).
    breakers = BreakerBoard(fail_max=settings.engine_breaker_fail_max, reset_timeout_s=settings.engine_breaker_reset_s, exclude=[asyncio.CancelledError])
    await worker_main.serve(
        settings, catalog, keys, log, workflows=[LlmJobWorkflow],
        activities=lambda books: [LlmActivities(books, catalog, http, breakers=breakers, oom_switch_after=settings.llm_oom_switch_after).generate,
                                  ShadowOffers(books, catalog, ShadowBudget(books.bus.redis, settings.shadow_max_backlog), settings.shadow_max_bytes).offer],
        started={"models": [m.name for m in catalog.current.registry.models]},
        # Gauges refreshed in the background: each catalog endpoint's health and breaker, this host's GPUs (NVML).
        background=[keep_probing(catalog, http, settings.engine_probe_every_s, breakers), keep_reading(GpuReadings())],
        pii=pii,
    )
    await http.aclose()
    pii.close()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog.
    worker_main.run("switchyard-worker-llm", WorkerSettings(), os.environ, main)

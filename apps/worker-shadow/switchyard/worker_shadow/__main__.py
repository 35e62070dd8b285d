"""Shadow worker: polls the ``shadow`` task queue; replays sampled live requests on their models'
candidates and compares (docs/shadow.md). Light: no model runs here, it calls the domain workers'
KServe V2 endpoints and the LLM engines."""

from __future__ import annotations

import logging
import os

import httpx

from switchyard.common import worker_main
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.shadow_store import ShadowStore
from switchyard.common.engines.base import ENGINE_KEEPALIVE_EXPIRY_S
from switchyard.common.http1 import Http1Client
from switchyard.common.payload_codec import KeyRing
from switchyard.common.shadow.bodies import ShadowBodies
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.worker_shadow.activities import ShadowActivities
from switchyard.worker_shadow.settings import ShadowWorkerSettings
from switchyard.worker_shadow.workflows import ShadowCompareWorkflow

log = logging.getLogger("switchyard.worker_shadow")


async def main(settings: ShadowWorkerSettings, catalog: CatalogHolder, keys: KeyRing) -> None:
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.engine_timeout_s, connect=5.0), limits=httpx.Limits(keepalive_expiry=ENGINE_KEEPALIVE_EXPIRY_S))
    v2 = {domain: Http1Client.for_url(up.http, timeout_s=settings.shadow_timeout_s) for domain, up in settings.v2_upstreams.items()}
    await worker_main.serve(
        settings, catalog, keys, log, workflows=[ShadowCompareWorkflow],
        activities=lambda books: [ShadowActivities(ShadowStore(books.store.engine), ShadowBudget(books.bus.redis, settings.shadow_max_backlog),
                                                   ShadowBodies(books.bus.redis, keys), v2, http, settings.shadow_timeout_s).compare],
        started={"v2_upstreams": sorted(v2)},
    )
    for client in v2.values():
        await client.close()
    await http.aclose()


if __name__ == "__main__":
    # The one place this process reads its environment: settings, and ${VAR}s of the catalog.
    worker_main.run("switchyard-worker-shadow", ShadowWorkerSettings(), os.environ, main)

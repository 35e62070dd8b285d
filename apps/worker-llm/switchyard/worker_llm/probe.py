"""Health probe of every LLM endpoint in the catalog: ``switchyard_engine_up`` (docs/metrics.md),
and the state of each endpoint's circuit breaker (``switchyard_breaker_state``, which turns
half-open with time alone).

Every few seconds each endpoint's ``Engine.health()`` is asked, all at once; the catalog is read
each round, so a reload adds and drops endpoints (a dropped one's series goes away).
"""

from __future__ import annotations

import asyncio

import httpx

from switchyard.common import metrics
from switchyard.common.breaker import BreakerBoard
from switchyard.common.catalog import CatalogHolder
from switchyard.common.engines.factory import engine_for
from switchyard.common.engines.fallback import export_breaker_states
from switchyard.common.model_registry import Endpoint


async def probe_once(catalog: CatalogHolder, http: httpx.AsyncClient, seen: set[tuple[str, str]], breakers: BreakerBoard | None = None) -> None:
    """Probe each endpoint of the current catalog's LLM models; ``seen``: the labels set last round."""
    targets: dict[tuple[str, str], Endpoint] = {}
    for model in catalog.current.registry.models:
        if model.domain == "llm":
            for position, endpoint in enumerate(model.endpoints):
                targets[(model.name, metrics.endpoint_label(endpoint.engine, position))] = endpoint
    if breakers is not None:
        export_breaker_states(breakers, {f"{name}/{label}": e for (name, label), e in targets.items()})
        for name, label in seen - targets.keys():
            metrics.BREAKER_STATE.remove(f"{name}/{label}")
    answers = await asyncio.gather(*(engine_for(e, http).health() for e in targets.values()))
    for (name, label), up in zip(targets, answers, strict=True):
        metrics.ENGINE_UP.labels(model=name, endpoint=label).set(1 if up else 0)
    for gone in seen - targets.keys():
        metrics.ENGINE_UP.remove(*gone)
    seen.clear()
    seen.update(targets)


async def keep_probing(catalog: CatalogHolder, http: httpx.AsyncClient, every_s: float, breakers: BreakerBoard | None = None) -> None:
    seen: set[tuple[str, str]] = set()
    while True:
        await probe_once(catalog, http, seen, breakers)
        await asyncio.sleep(every_s)

"""Process-wide resources (database, Redis, Temporal, model catalog), created in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis
from starlette.types import Scope
from temporalio.client import Client

from switchyard.api.jobs.dispatch import Dispatcher
from switchyard.api.jobs.retention import Purger
from switchyard.api.openai.fast_start import FastStarts
from switchyard.api.settings import ApiSettings
from switchyard.api.v2.gateway import V2Gateway
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.catalog_changes import ChangeFollower
from switchyard.common.db.store import JobStore
from switchyard.common.events import EventBus
from switchyard.common.keys import KeyStore
from switchyard.common.model_registry import ModelRegistry
from switchyard.common.payload_codec import KeyRing
from switchyard.common.pii import PiiGuard
from switchyard.common.quotas import Backlog, Quotas


@dataclass
class Resources:
    settings: ApiSettings
    store: JobStore
    redis: Redis
    bus: EventBus
    temporal: Client
    # Reloaded on SIGHUP: read it per request, never keep a model across requests.
    catalog: CatalogHolder
    dispatcher: Dispatcher
    # Retention and DELETE ?purge=true (jobs/retention.py).
    purger: Purger
    # Encryption at rest: seals job input (switchyard.common.payload_codec).
    payload_keys: KeyRing
    # Client for engines the API calls itself (token counting, embeddings).
    http: httpx.AsyncClient
    # KServe V2 realtime lane (models, worker endpoints, breakers).
    v2: V2Gateway
    # API keys (switchyard.api.auth checks them; the admin routes manage them).
    keys: KeyStore
    # Per-key limits and the per-model backlog, in Redis (switchyard.common.quotas).
    quotas: Quotas
    backlog: Backlog
    # PII redaction (switchyard.common.pii), built at start-up with the model loaded.
    pii: PiiGuard
    started_at: int
    # Completions this process runs itself (fast start, switchyard.api.openai.fast_start).
    fast_starts: FastStarts
    # Promotions and rollbacks applied on top of the catalog files (switchyard.api.shadow.changes).
    changes: ChangeFollower | None = None

    @property
    def registry(self) -> ModelRegistry:
        """The LLM models of the catalog now."""
        return self.catalog.current.registry


# async: FastAPI runs a plain ``def`` dependency on its thread pool, a hop of 0.1-1 ms per request.
async def _resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


Res = Annotated[Resources, Depends(_resources)]


def resources_of(scope: Scope) -> Resources:
    """The resources of the app serving ``scope``, for pure-ASGI fast paths (no Request object)."""
    return scope["app"].state.resources  # type: ignore[no-any-return]

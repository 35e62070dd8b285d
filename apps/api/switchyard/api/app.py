"""FastAPI application factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from switchyard.api import errors
from switchyard.api.admin import routes as admin_routes
from switchyard.api.auth import Gatekeeper, KeyFirst
from switchyard.api.body_limit import BodyLimit
from switchyard.api.deps import Resources, resources_of
from switchyard.api.gauges import PlatformGauges
from switchyard.api.jobs import event_streaming
from switchyard.api.jobs import routes as jobs_routes
from switchyard.api.jobs.dispatch import Dispatcher
from switchyard.api.jobs.retention import Purger
from switchyard.api.openai import routes as openai_routes
from switchyard.api.openai.embeddings import engine_breakers
from switchyard.api.openai.fast_start import FastStarts
from switchyard.api.recsys import routes as recsys_routes
from switchyard.api.recsys.fast_path import RecommendationsFastPath
from switchyard.api.request_log import GrpcCalls, RequestLog, RequestWriter, recording_authorize
from switchyard.api.settings import ApiSettings
from switchyard.api.shadow import changes as shadow_changes
from switchyard.api.shadow import routes as shadow_routes
from switchyard.api.usage import routes as usage_routes
from switchyard.api.v2 import routes as v2_routes
from switchyard.api.v2.gateway import V2Gateway, gateway_of
from switchyard.common import tracing
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.catalog_changes import ChangeFollower, ChangeStore
from switchyard.common.db.store import JobStore, RequestStore, make_engine
from switchyard.common.engines.base import ENGINE_KEEPALIVE_EXPIRY_S
from switchyard.common.engines.generation_client import generation_client
from switchyard.common.events import EventBus, make_redis
from switchyard.common.keys import KeyStore
from switchyard.common.payload_codec import KeyRing
from switchyard.common.pii import PiiGuard
from switchyard.common.quotas import Backlog, Quotas
from switchyard.common.shadow.bodies import ShadowBodies
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.common.shadow.canary import CanaryOutcomes, RollbackController
from switchyard.common.shadow.mirror import ShadowMirror
from switchyard.common.temporal import connect
from switchyard.common.v2 import grpc_frontend, rest_frontend


def create_app(settings: ApiSettings, catalog: CatalogHolder) -> FastAPI:
    """The API of a process whose entry point built ``settings`` and loaded ``catalog``."""
    gatekeeper = Gatekeeper()
    writer = RequestWriter()  # the request log's rows and lines, off the request path
    authorize_v2 = recording_authorize(gatekeeper)  # the V2 key check, noting the caller on the request's record

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog.reload_on_sighup()
        # Per API process (uvicorn may start several): before the Temporal client and the gRPC server.
        tracing.setup_tracing(settings, "switchyard-api")
        db = make_engine(settings.postgres_dsn)
        redis = make_redis(settings.redis_url)
        payload_keys = KeyRing.from_settings(settings)  # __main__ already refused to start without one
        temporal = await connect(settings, payload_keys, metrics_host=settings.metrics_host, metrics_port=settings.temporal_metrics_port)
        store = JobStore(db)
        requests = RequestStore(db)
        writer.start(requests)
        bus = EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen)
        backlog = Backlog(redis, db.url.database or "default")
        dispatcher = Dispatcher(store, bus, temporal, payload_keys, backlog=backlog)
        dispatcher.start()
        purger = Purger(store, bus, temporal, retention_s=settings.retention_s, every_s=settings.purge_every_s,
                        requests=requests, request_log_retention_s=settings.request_log_retention_s)
        purger.start()
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0), limits=httpx.Limits(keepalive_expiry=ENGINE_KEEPALIVE_EXPIRY_S),
                                 event_hooks=tracing.httpx_event_hooks())  # engines see traceparent
        v2 = V2Gateway(settings, catalog)
        v2.mirror = shadow = ShadowMirror(temporal, ShadowBudget(redis, settings.shadow_max_backlog), ShadowBodies(redis, payload_keys),
                                         max_bytes=settings.shadow_max_bytes)
        shadow.start()
        # Promotions and rollbacks on top of the catalog files, and the canaries' automatic rollback (docs/shadow.md).
        follower = ChangeFollower(ChangeStore(db), catalog)
        await follower.sync_or_log()
        v2.canary = CanaryOutcomes(redis, db.url.database or "default")
        canary_tasks = [asyncio.create_task(follower.run()), asyncio.create_task(RollbackController(v2.canary, follower).run())]
        gauges = PlatformGauges(store, v2, settings.gauges_every_s)  # backlog and breaker gauges (docs/metrics.md)
        gauges.start()
        keys = KeyStore(db, settings.key_pepper.get_secret_value(), tier_limits=settings.tier_quotas)
        quotas = Quotas(redis)
        gatekeeper.keys, gatekeeper.quotas = keys, quotas
        pii = PiiGuard(settings)  # loads the spaCy model now, not on the first request
        llm_http = generation_client(settings.llm_engine_timeout_s)  # completions started here (docs/llm-speed.md)
        books = JobBookkeeping(store, bus, payload_keys, pii=pii, model_names=lambda: catalog.current.names)
        fast_starts = FastStarts(settings, books, llm_http, engine_breakers(settings.breaker_fail_max, settings.breaker_reset_s), backlog,
                                 dispatcher.dispatch_soon, catalog, shadow)
        grpc_server = await grpc_frontend.start_server(v2, settings.api_host, settings.grpc_port, settings.max_body_bytes, authorize_v2,
                                                    GrpcCalls(writer, grpc_frontend.OPEN_METHODS))
        app.state.resources = Resources(settings=settings, store=store, redis=redis, bus=bus, temporal=temporal, catalog=catalog,
                                        dispatcher=dispatcher, purger=purger, payload_keys=payload_keys, http=http, v2=v2, keys=keys,
                                        quotas=quotas, backlog=backlog, pii=pii,
                                        started_at=int(time.time()), changes=follower, fast_starts=fast_starts)
        yield
        await grpc_server.stop(grace=2)
        for task in canary_tasks:
            task.cancel()
        await asyncio.gather(*canary_tasks, return_exceptions=True)
        await v2.canary.close()
        await writer.close()  # the last records' rows, before the database goes
        await gauges.close()
        await shadow.close()
        await v2.close()
        await purger.close()
        await fast_starts.close()  # before the dispatcher: workers take the runs over at once
        await dispatcher.close()
        await http.aclose()
        await llm_http.aclose()
        await redis.aclose()
        await db.dispose()
        pii.close()
        tracing.shutdown_tracing()

    # FastAPI's own OpenTelemetry is off: tracing.TraceRequests makes the request span (fast paths
    # included, no per-operation spans), metrics are prometheus-client's, and its validation-failure
    # logs would carry the rejected input (prompt text) to any OTel log exporter.
    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "operation_spans": False, "metrics": False, "logs": False, "auto_configure": False})
    app.state.gatekeeper = gatekeeper
    errors.install(app)
    app.include_router(jobs_routes.router)
    app.include_router(event_streaming.router)
    app.include_router(openai_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(usage_routes.router)
    app.include_router(shadow_changes.router)  # before the report's GET /v1/shadow/{model:path}, which would take .../changes
    app.include_router(shadow_routes.router)
    app.include_router(recsys_routes.router)
    v2_routes.add_routes(app, authorize_v2)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(KeyFirst, gatekeeper=gatekeeper)  # before the body limit: no key, no 413
    app.add_middleware(RecommendationsFastPath, gatekeeper=gatekeeper, max_bytes=settings.max_body_bytes, resources_of=resources_of)
    app.add_middleware(rest_frontend.V2FastPath, plane_of=gateway_of, max_bytes=settings.max_body_bytes, authorize=authorize_v2)
    app.add_middleware(errors.CatchUnexpected)  # inside the request log too: an unexpected 500 carries its X-Request-Id
    app.add_middleware(RequestLog, writer=writer)  # outside the V2 fast path: every request gets its record and id
    app.add_middleware(errors.CatchUnexpected)  # a crash anywhere is a 500 that keeps the connection
    app.add_middleware(tracing.TraceRequests)  # outermost: the request's span covers all of it (no-op without traces)
    return app

"""FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from switchyard.api import errors, jobs_routes, openai_routes, streaming, v2_grpc, v2_routes
from switchyard.api.body_limit import BodyLimit
from switchyard.api.deps import Resources
from switchyard.api.dispatch import Dispatcher
from switchyard.api.settings import ApiSettings
from switchyard.api.v2_gateway import V2Gateway
from switchyard.common.catalog import CatalogHolder
from switchyard.common.db.store import JobStore, make_engine
from switchyard.common.events import EventBus, make_redis
from switchyard.common.temporal import connect


def create_app(settings: ApiSettings | None = None, catalog: CatalogHolder | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = catalog or CatalogHolder.load()  # a bad catalog stops the API, naming file, model and field
        models.reload_on_sighup()
        db = make_engine(settings.postgres_dsn)
        redis = make_redis(settings.redis_url)
        temporal = await connect(settings)
        store = JobStore(db)
        bus = EventBus(redis, ttl_s=settings.event_ttl_s, maxlen=settings.event_stream_maxlen)
        dispatcher = Dispatcher(store, bus, temporal)
        dispatcher.start()
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        v2 = V2Gateway(settings, models)
        grpc_server = await v2_grpc.start_server(v2, settings.api_host, settings.grpc_port, settings.max_body_bytes)
        app.state.resources = Resources(settings=settings, store=store, redis=redis, bus=bus, temporal=temporal, catalog=models,
                                        dispatcher=dispatcher, http=http, v2=v2, started_at=int(time.time()))
        yield
        await grpc_server.stop(grace=2)
        await v2.close()
        await dispatcher.close()
        await http.aclose()
        await redis.aclose()
        await db.dispose()

    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(jobs_routes.router)
    app.include_router(streaming.router)
    app.include_router(openai_routes.router)
    app.include_router(v2_routes.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(v2_routes.V2InferFastPath, max_bytes=settings.max_body_bytes)
    app.add_middleware(errors.CatchUnexpected)  # outermost: a crash anywhere is a 500 that keeps the connection
    return app

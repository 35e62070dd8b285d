"""The KServe V2 REST front end on any DataPlane: Starlette routes for everything but inference,
which the plain-ASGI fast path (switchyard.common.v2.asgi) answers before any framework. The API
adds the routes and the fast path to its FastAPI app; a worker serves them as its own Starlette app.
Errors are V2's ``{"error": "..."}``. Given an ``authorize`` hook (the API's keys), every route but
``/v2/health/{live,ready}`` is checked with it first.

Routes (``endpoints``): ``/v2`` (server metadata), ``/v2/health/{live,ready}``, ``POST /v2/repository/index``,
``/v2/models/stats``, and under ``/v2/models/{m}[/versions/{v}]``: metadata, ``/ready``,
``/config`` (model configuration), ``/stats`` (statistics), ``POST /infer`` (fast path).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from switchyard.common import tracing
from switchyard.common.v2.asgi import Authorize, TunnelHandler, error_response, infer_fast_path
from switchyard.common.v2.dataplane import DataPlane
from switchyard.common.v2.errors import V2Error

# The plane that serves a request (the API's is created in its lifespan, after the app).
PlaneOf = Callable[[Scope], DataPlane]
Handler = Callable[..., Awaitable[Response]]


class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One V2 route. ``handler(request, **path params)``: its signature declares the path params,
    so the API registers it as a FastAPI route (documented in its OpenAPI) and a worker as a
    Starlette one (``routes``)."""

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)


def v2_errors(fn: Handler) -> Handler:
    @functools.wraps(fn)  # keeps the signature the API's FastAPI reads
    async def answer(*args: Any, **kwargs: Any) -> Response:
        try:
            return await fn(*args, **kwargs)
        except V2Error as e:
            return error_response(e)

    return answer


def authorized(fn: Handler, authorize: Authorize | None) -> Handler:
    """``fn`` behind ``authorize`` (its first argument is the request)."""
    if authorize is None:
        return fn
    check = authorize

    @functools.wraps(fn)
    async def answer(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            await check(request.headers)
        except V2Error as e:
            return error_response(e)
        return await fn(request, *args, **kwargs)

    return answer


def endpoints(plane_of: PlaneOf, authorize: Authorize | None = None) -> list[Endpoint]:
    """The routes; the health probes stay open, ``authorize`` guards the others."""

    @v2_errors
    async def server_metadata(request: Request) -> Response:
        return JSONResponse(plane_of(request.scope).server_metadata())

    @v2_errors
    async def live(request: Request) -> Response:
        return Response(status_code=200 if await plane_of(request.scope).live() else 503)

    @v2_errors
    async def ready(request: Request) -> Response:
        return Response(status_code=200 if await plane_of(request.scope).ready() else 503)

    @v2_errors
    async def repository_index(request: Request) -> Response:
        """Triton's model repository index. Body: optional ``{"ready": true}`` to list only the models served."""
        try:
            ready_only = RepositoryIndexRequest.model_validate_json(await request.body() or b"{}").ready
        except ValidationError as e:
            raise V2Error(400, f"invalid repository index request: {e.errors()[0]['msg']}") from None
        return JSONResponse(plane_of(request.scope).repository_index(ready_only))

    @v2_errors
    async def all_statistics(request: Request) -> Response:
        return JSONResponse((await plane_of(request.scope).statistics()).model_dump())

    @v2_errors
    async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
        return JSONResponse(plane_of(request.scope).model_metadata(model, version))

    @v2_errors
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        return Response(status_code=200 if await plane_of(request.scope).model_ready(model, version) else 503)

    @v2_errors
    async def model_config(request: Request, model: str, version: str | None = None) -> Response:
        return JSONResponse(plane_of(request.scope).model_config(model, version))

    @v2_errors
    async def model_statistics(request: Request, model: str, version: str | None = None) -> Response:
        return JSONResponse((await plane_of(request.scope).statistics(model, version)).model_dump())

    def guard(fn: Handler) -> Handler:
        return authorized(fn, authorize)

    per_model = [("", model_metadata), ("/ready", model_ready), ("/config", model_config), ("/stats", model_statistics)]
    return [
        Endpoint("/v2", guard(server_metadata)),
        Endpoint("/v2/health/live", live),
        Endpoint("/v2/health/ready", ready),
        Endpoint("/v2/repository/index", guard(repository_index), ("POST",)),
        Endpoint("/v2/models/stats", guard(all_statistics)),  # before /v2/models/{model}
        *(Endpoint(base + tail, guard(fn)) for tail, fn in per_model for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")),
    ]


def routes(plane_of: PlaneOf) -> list[Route]:
    """The endpoints as Starlette routes."""

    def starlette(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await fn(request, **request.path_params)

        return endpoint

    return [Route(e.path, starlette(e.handler), methods=list(e.methods)) for e in endpoints(plane_of)]


class V2FastPath:
    """ASGI middleware: ``POST /v2/models/{m}[/versions/{v}]/infer`` (and, given a tunnel, gRPC
    tunnel calls) answered by the plane before the app's routing and middleware; the body limit is
    enforced here too, and ``authorize`` before the body is read."""

    def __init__(self, app: ASGIApp, plane_of: PlaneOf, max_bytes: int, tunnel: TunnelHandler | None = None, authorize: Authorize | None = None) -> None:
        async def infer(scope: Scope, model: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
            return await plane_of(scope).infer_rest(model, version, body, headers)

        self._asgi = infer_fast_path(app, infer, max_bytes, tunnel, authorize)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)


def create_app(plane: DataPlane, max_bytes: int, tunnel: TunnelHandler | None = None, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """A standalone V2 REST server (a worker's) on ``plane``; with traces on (set up before), a
    SERVER span per request continuing the API's ``traceparent``. ``extra_routes``: the worker's
    own routes beside V2's (e.g. the recsys worker's ``/recsys/events``)."""

    async def infer(_: Scope, model: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        return await plane.infer_rest(model, version, body, headers)

    app = Starlette(routes=[*routes(lambda _: plane), *extra_routes])
    return tracing.traced_asgi(infer_fast_path(app, infer, max_bytes, tunnel, report_compute=True))

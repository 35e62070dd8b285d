"""The realtime lane of a V2 model worker (vision, recsys): its data plane served over KServe V2
REST (with the gRPC tunnel) and gRPC, and kept in step with catalog reloads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import uvicorn
from starlette.routing import BaseRoute

from switchyard.common.catalog import Catalog, CatalogError, CatalogHolder
from switchyard.common.v2 import grpc_frontend, rest_frontend
from switchyard.common.v2.backends import InferBackend
from switchyard.common.v2.config import Backend, V2Config
from switchyard.common.v2.local_plane import LocalDataPlane


class ReloadablePlane(Protocol):
    backends: dict[str, InferBackend]

    def update(self, config: V2Config, new_backends: dict[str, InferBackend] | None = None) -> None: ...


def follow_catalog(catalog: CatalogHolder, plane: ReloadablePlane, domain: str, open_backends: Callable[[dict[str, Backend]], dict[str, InferBackend]]) -> None:
    """Serve each reloaded catalog's ``domain`` models; the backends it adds are opened first (a
    missing model file refuses the reload)."""

    def serve(new: Catalog) -> None:
        try:
            added = open_backends({n: b for n, b in new.v2.backends_for(domain).items() if n not in plane.backends})
            plane.update(new.v2, added)
        except FileNotFoundError as e:
            raise CatalogError(str(e)) from None

    catalog.listeners.append(serve)


@contextlib.asynccontextmanager
async def front_ends(plane: LocalDataPlane, host: str, http_port: int, grpc_port: int, max_body_bytes: int,
                     extra_routes: Sequence[BaseRoute] = ()) -> AsyncIterator[dict[str, str]]:
    """Both V2 servers, listening inside the block (it gets their addresses); stopped after it."""
    app = rest_frontend.create_app(plane, max_body_bytes, grpc_frontend.tunnel(plane), extra_routes=extra_routes)
    http = uvicorn.Server(uvicorn.Config(app, host=host, port=http_port, log_level="warning", access_log=False, lifespan="off"))
    rpc = await grpc_frontend.start_server(plane, host, grpc_port, max_body_bytes)
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        await asyncio.sleep(0.05)
    yield {"v2_http": f"{host}:{http_port}", "v2_grpc": f"{host}:{grpc_port}"}
    http.should_exit = True
    await http_task
    await rpc.stop(grace=2)

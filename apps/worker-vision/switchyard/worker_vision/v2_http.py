"""KServe V2 REST endpoints of the vision worker (the realtime lane's upstream)."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

from switchyard.common.v2.asgi import TunnelHandler, error_response, infer_fast_path
from switchyard.common.v2.errors import V2Error, error_body
from switchyard.common.v2.rest import HEADER_LENGTH, encode_response, parse_request
from switchyard.worker_vision.dataplane import VisionDataPlane

log = logging.getLogger("switchyard.worker_vision")

SERVER = {"name": "switchyard-worker-vision", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


def create_app(plane: VisionDataPlane, max_body_bytes: int, grpc_tunnel: TunnelHandler | None = None) -> ASGIApp:
    async def server_metadata(_: Request) -> Response:
        return JSONResponse(SERVER)

    async def live(_: Request) -> Response:
        return Response(status_code=200)

    async def ready(_: Request) -> Response:
        return Response(status_code=200 if await plane.ready() else 503)

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(plane.model(request.path_params["model"], request.path_params.get("version")).metadata())
        except V2Error as e:
            return error_response(e)

    async def model_ready(request: Request) -> Response:
        try:
            ok = await plane.model_ready(request.path_params["model"], request.path_params.get("version"))
        except V2Error as e:
            return error_response(e)
        return Response(status_code=200 if ok else 503)

    async def infer(_: Scope, model: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        try:
            req = parse_request(model, version, body, headers.get(HEADER_LENGTH))
            out, out_headers = encode_response(await plane.infer(req), req)
        except V2Error:
            raise
        except Exception:
            log.exception("inference failed")
            return 500, error_body("internal error in the vision worker"), {"content-type": "application/json"}
        return 200, out, out_headers

    async def index(_: Request) -> Response:
        body: list[dict[str, Any]] = [{"name": m.name, "version": m.versions[-1], "state": "READY"} for m in plane.models.values()]
        return Response(json.dumps(body), media_type="application/json")

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
    ]
    # Infer requests and gRPC tunnel calls skip Starlette's routing and middleware (switchyard.common.v2.asgi).
    return infer_fast_path(Starlette(routes=routes), infer, max_body_bytes, grpc_tunnel)

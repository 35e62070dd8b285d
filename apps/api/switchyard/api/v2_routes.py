"""KServe V2 REST (``/v2``): server and model metadata and health here; inference forwarded to the
model's worker (see v2_gateway). Errors are V2's ``{"error": "..."}``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from switchyard.api.deps import Res
from switchyard.api.v2_gateway import PASS_HEADERS
from switchyard.common.v2.errors import V2Error, error_body

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

SERVER_METADATA = {"name": "switchyard", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


def v2_error_response(e: V2Error) -> Response:
    return Response(error_body(e.message), status_code=e.status, media_type="application/json", headers=e.headers)


@router.get("")
async def server_metadata() -> JSONResponse:
    return JSONResponse(SERVER_METADATA)


@router.get("/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(res: Res) -> Response:
    return Response(status_code=200 if await res.v2.ready() else 503)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(res: Res, model: str, version: str | None = None) -> Response:
    try:
        return JSONResponse(res.v2.model(model, version).metadata())
    except V2Error as e:
        return v2_error_response(e)


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(res: Res, request: Request, model: str, version: str | None = None) -> Response:
    try:
        resp = await res.v2.forward_http(res.v2.model(model, version), request.url.path, None, {})
    except V2Error as e:
        return v2_error_response(e)
    return Response(status_code=resp.status)


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(res: Res, request: Request, model: str, version: str | None = None) -> Response:
    try:
        m = res.v2.model(model, version)
        body = await request.body()
        if not body:
            raise V2Error(400, "empty inference request")
        headers = {k: v for k in PASS_HEADERS if (v := request.headers.get(k)) is not None}
        resp = await res.v2.forward_http(m, request.url.path, body, headers)
    except V2Error as e:
        return v2_error_response(e)
    return Response(resp.body, status_code=resp.status, headers=resp.headers)

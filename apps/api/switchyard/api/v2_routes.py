"""KServe V2 REST (``/v2``): server and model metadata and health here; inference forwarded to the
model's worker (see v2_gateway) by ``V2InferFastPath``. Errors are V2's ``{"error": "..."}``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from switchyard.api.deps import Res
from switchyard.api.v2_gateway import PASS_HEADERS, V2Gateway
from switchyard.common.v2.asgi import error_response, infer_fast_path
from switchyard.common.v2.errors import V2Error

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

class RepositoryIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = False


SERVER_METADATA = {"name": "switchyard", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("")
async def server_metadata() -> JSONResponse:
    return JSONResponse(SERVER_METADATA)


@router.get("/health/live")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(res: Res) -> Response:
    return Response(status_code=200 if await res.v2.ready() else 503)


@router.post("/repository/index")
async def repository_index(res: Res, request: Request) -> Response:
    """Triton's model repository index (``get_model_repository_index``): the catalog's V2 models,
    READY where a worker serves their domain. Body: optional ``{"ready": true}`` to list only those."""
    raw = await request.body()
    try:
        ready_only = RepositoryIndexRequest.model_validate_json(raw or b"{}").ready
    except ValidationError as e:
        return error_response(V2Error(400, f"invalid repository index request: {e.errors()[0]['msg']}"))
    index = []
    for m in res.v2.config.models:
        served = m.domain in res.v2.workers
        if ready_only and not served:
            continue
        for version in m.versions:
            index.append({"name": m.name, "version": version, "state": "READY" if served else "UNAVAILABLE",
                          "reason": "" if served else f"no worker serves domain '{m.domain}'"})
    return JSONResponse(index)


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
async def model_metadata(res: Res, model: str, version: str | None = None) -> Response:
    try:
        return JSONResponse(res.v2.model(model, version).metadata())
    except V2Error as e:
        return error_response(e)


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
async def model_ready(res: Res, request: Request, model: str, version: str | None = None) -> Response:
    try:
        resp = await res.v2.forward_http(res.v2.model(model, version), request.url.path, None, {})
    except V2Error as e:
        return error_response(e)
    return Response(status_code=resp.status)


class V2InferFastPath:
    """``POST /v2/models/{m}[/versions/{v}]/infer``: the realtime lane's hot path, answered before
    FastAPI's routing (see switchyard.common.v2.asgi); the body limit is enforced here too."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._asgi = infer_fast_path(app, self._forward, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)

    @staticmethod
    async def _forward(scope: Scope, model: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        gateway: V2Gateway = scope["app"].state.resources.v2
        answer = await gateway.forward_http(gateway.model(model, version), scope["path"], body, {k: headers[k] for k in PASS_HEADERS if k in headers})
        return answer.status, answer.body, answer.headers

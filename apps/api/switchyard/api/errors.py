"""One error shape for every 4xx/5xx: ``{"error": {"type", "code", "message", "param", "details"}}``.

It is OpenAI's error object plus optional ``details``, so OpenAI clients read it unchanged. The
KServe V2 routes (``/v2``) answer with V2's own shape, ``{"error": "message"}``, as V2 clients expect.
An unexpected exception becomes a 500 in that shape in ``CatchUnexpected`` (an ASGI middleware), or a
503 with ``Retry-After`` when it is Redis or PostgreSQL being unreachable (a restart, an outage).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.openai.protocol import UNSUPPORTED
from switchyard.common.queues import DOMAINS
from switchyard.common.v2.asgi import error_response as v2_error_response
from switchyard.common.v2.errors import V2Error

OPENAI_PATHS = ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models")

log = logging.getLogger("switchyard.api")

BACKEND_DOWN = "a backing service (database or event store) is unavailable; retry shortly"

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


def error_body(status: int, code: str, message: str, param: str | None = None, details: list[Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"type": _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"), "code": code, "message": message, "param": param}
    if details:
        err["details"] = details
    return {"error": err}


V2_PREFIX = "/v2"


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(status: int, code: str, message: str, **kw: Any) -> JSONResponse:
    headers = kw.pop("headers", None)
    return JSONResponse(error_body(status, code, message, **kw), status_code=status, headers=headers)


def _error_for(request: Request, status: int, code: str, message: str, **kw: Any) -> Response:
    if is_v2(request.url.path):
        return v2_error_response(V2Error(status, message, kw.get("headers")))
    return error_response(status, code, message, **kw)


def _loc(loc: tuple[Any, ...]) -> str:
    """``body.llm.input.prompt`` → ``input.prompt``: drop the body root, union tags and type labels.

    A bad dict key (``metadata.<key>.[key]``) is named by its dict: ``metadata``.
    """
    parts = [str(p) for p in loc]
    if parts[:1] == ["body"]:
        parts = parts[1:]
        if parts and parts[0] in DOMAINS:
            parts = parts[1:]
    parts = [p for i, p in enumerate(parts) if p != "[key]" and parts[i + 1:i + 2] != ["[key]"]]
    return ".".join(p for p in parts if not any(c in p for c in "[(") and not p.startswith(("constrained-", "function-")))


def validation_error(path: str, errors: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The status and body for a request body that failed validation (pydantic's errors, located
    from ``body`` as FastAPI locates them): one reading for the routes and the fast paths."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, error_body(400, "invalid_json", "request body is not valid JSON")
    details = [{"loc": _loc(tuple(e.get("loc", ()))), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    first = details[0] if details else {"loc": None, "msg": "invalid request", "type": None}
    # OpenAI's routes answer bad parameters with 400, as OpenAI does; the job API uses 422.
    status = 400 if path.startswith(OPENAI_PATHS) else 422
    param = first["loc"] or None
    if first["type"] == "extra_forbidden" and param in UNSUPPORTED:
        return status, error_body(status, "unsupported_parameter", f"{param}: {UNSUPPORTED[param]} is not supported by Switchyard", param=param)
    return status, error_body(status, "invalid_value" if status == 400 else "validation_error", f"{param or 'body'}: {first['msg']}", param=param, details=details)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_for(request, exc.status, exc.code, exc.message, param=exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, body = validation_error(request.url.path, exc.errors())
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI raises a bare 400 when it cannot decode the body (bad UTF-8, broken framing).
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_for(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


class CatchUnexpected:
    """ASGI middleware: an exception that escapes the app becomes the 500 error body (V2's shape on
    ``/v2``), logged with its traceback.

    Unlike an ``exception_handler(Exception)`` (run by Starlette's ServerErrorMiddleware, which
    re-raises after answering, so uvicorn closes the connection), it does not re-raise: the
    keep-alive connection, which Nginx pools and reuses for other clients, survives. Nor after a
    complete response (an error in a background task). Only a response cut short propagates the
    exception: the client cannot tell it from a whole one unless the connection closes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            started = started or message["type"] == "http.response.start"
            finished = finished or (message["type"] == "http.response.body" and not message.get("more_body", False))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as e:
            if started and not finished:
                raise
            path = scope.get("path", "")
            log.exception("unhandled error: %s %s", scope.get("method"), path)
            if not started:
                await _unexpected_response(path, e)(scope, receive, send)


def backend_down(e: BaseException) -> bool:
    """Redis or PostgreSQL unreachable or restarting (a connection refused, broken or timed out)."""
    if isinstance(e, DBAPIError):
        return bool(e.connection_invalidated) or isinstance(e, OperationalError | InterfaceError)
    return isinstance(e, RedisConnectionError | RedisTimeoutError | ConnectionError | TimeoutError)


def _unexpected_response(path: str, e: BaseException) -> Response:
    """503 + Retry-After for a backing service that is down (the request may succeed in a moment);
    500 for anything else."""
    status, code, message = (503, "service_unavailable", BACKEND_DOWN) if backend_down(e) else (500, "internal_error", "internal error")
    headers = {"Retry-After": "1"} if status == 503 else None
    return v2_error_response(V2Error(status, message, headers)) if is_v2(path) else error_response(status, code, message, headers=headers)

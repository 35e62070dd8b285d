"""``POST /v1/recommendations`` as plain ASGI: the route's answer without FastAPI's routing,
dependency solving and body validation, which cost ~1.3 ms of the route's ~4 ms over the worker
(docs/recsys.md, "Where the time goes"), twice the V2 infer fast path's overhead for the same work.

It answers exactly as the route would: the key first (401, 429 with the key's rate headers), the
``v2`` scope (403), the body limit (413), then the body read as FastAPI reads it (400 for invalid
JSON; 422 naming the field, in the platform's one error shape) and the route's own work
(``routes.recommend``). A body that is not declared as JSON (a form, text) goes to the FastAPI
route, whose answer (422) it keeps; the route also documents the endpoint in the OpenAPI schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from switchyard.api import request_log
from switchyard.api.auth import Gatekeeper, Refused, refusal
from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError, error_body, validation_error
from switchyard.api.recsys.routes import recommend
from switchyard.common.contracts import RecommendationRequest
from switchyard.common.quotas import Bucket
from switchyard.common.v2.asgi import read_body, respond
from switchyard.common.v2.errors import V2Error

PATH = "/v1/recommendations"
SCOPE = "v2"
# FastAPI's reading of an empty body for a required body parameter.
_MISSING_BODY: list[Mapping[str, Any]] = [{"type": "missing", "loc": ("body",), "msg": "Field required"}]


def declared_json(content_type: str | None) -> bool:
    """FastAPI parses a body as JSON when it has no content type or a JSON one (``+json`` too)."""
    if content_type is None:
        return True
    m = Message()
    m["content-type"] = content_type
    subtype = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse(body: bytes) -> RecommendationRequest:
    """The request, else the answer FastAPI's validation of the route's body gives (_Answered)."""
    errors: list[Mapping[str, Any]]
    try:
        if not body:
            errors = _MISSING_BODY
        else:
            return RecommendationRequest.model_validate(json.loads(body), from_attributes=True)  # as FastAPI validates bodies
    except ValueError as e:  # a JSONDecodeError, bad UTF-8, or the model's ValidationError
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()] if isinstance(e, ValidationError) else [{"type": "json_invalid"}]
    status, answer = validation_error(PATH, errors)
    raise _Answered(status, answer)


class _Answered(Exception):
    """An error answer already in the platform's shape (validation errors carry ``details``)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class RecommendationsFastPath:
    """ASGI middleware answering ``POST /v1/recommendations`` (outside KeyFirst and BodyLimit, inside
    the request log, which reads the caller from ``scope["state"]`` as KeyFirst leaves it)."""

    def __init__(self, app: ASGIApp, gatekeeper: Gatekeeper, max_bytes: int, resources_of: Callable[[Scope], Resources]) -> None:
        self.app = app
        self.gatekeeper = gatekeeper
        self.max_bytes = max_bytes
        self.resources_of = resources_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not declared_json(headers.get("content-type")):
            await self.app(scope, receive, send)
            return
        request_log.current().route = PATH  # the route's template: no search of the app's routes
        bucket: Bucket | None = None
        extra: dict[str, str] = {}
        try:
            try:
                scope.setdefault("state", {})["principal"] = principal = await self.gatekeeper.identify(headers)
                bucket = await self.gatekeeper.limit(principal)
                await self.gatekeeper.check(headers, SCOPE, principal)
            except Refused as e:
                raise refusal(e) from None
            status, out = 200, await recommend(self.resources_of(scope), parse(await self._body(headers, receive)))
        except ApiError as e:
            status, out, extra = e.status, json.dumps(error_body(e.status, e.code, e.message, e.param)).encode(), e.headers or {}
        except _Answered as e:
            status, out = e.status, json.dumps(e.body).encode()
        answer = {"content-type": "application/json", **extra}
        if bucket is not None:  # KeyFirst's rate headers, on every answer to a counted request
            answer.update(bucket.headers("requests"))
        await respond(send, status, out, answer)

    async def _body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        """The body within the limit (declared or streamed), else 413; 499 if the client left."""
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            raise _too_large(self.max_bytes)
        try:
            return await read_body(receive, self.max_bytes)
        except V2Error as e:
            if e.status == 413:
                raise _too_large(self.max_bytes) from None
            raise ApiError(499, "client_closed", "the client closed the request") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body exceeds {max_bytes} bytes")

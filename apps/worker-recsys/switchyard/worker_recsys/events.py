"""``POST /recsys/events`` on the worker's V2 HTTP port: one user event pushed to the feature store
(the API's ``POST /v1/recsys/events`` forwards here). Answers 200 ``{user_id, item_id, event_type,
pushed: true}``; errors in V2's shape ``{"error": "..."}``: 400 (bad body, unknown item), 413, 503 +
Retry-After (feature store unreachable)."""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchyard.common.contracts import RecsysEventCreate
from switchyard.common.v2.asgi import error_response, read_body
from switchyard.common.v2.errors import V2Error
from switchyard.worker_recsys.dataplane import RecsysDataPlane

PATH: Final = "/recsys/events"
MAX_BODY_BYTES: Final = 4096  # an event is ~60 bytes of JSON


def describe(e: ValidationError) -> str:
    """``field: message`` of pydantic's first complaint (``body`` when it is about the whole body)."""
    err = e.errors()[0]
    if err["type"] == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def routes(plane: RecsysDataPlane) -> list[Route]:
    async def post_event(request: Request) -> Response:
        try:
            body = await read_body(request.receive, MAX_BODY_BYTES)
            try:
                event = RecsysEventCreate.model_validate_json(body or b"{}")
            except ValidationError as e:
                raise V2Error(400, f"invalid event: {describe(e)}") from None
            await plane.record_event(event)
        except V2Error as e:
            return error_response(e)
        return JSONResponse({**event.model_dump(), "pushed": True})

    return [Route(PATH, post_event, methods=["POST"])]

"""``/v1/recommendations`` and ``/v1/recsys/events``: the recsys domain's realtime routes.

Both are thin: the body is validated here (the contract's limits, a 422 in the platform's error
shape), then forwarded to the recsys worker through the V2 gateway's ``recsys`` upstream and its
circuit breaker (switchyard.api.v2.gateway), which adds the request's ``X-Request-Id`` and notes
the worker's engine time on the request's record. A recommendation is the ranking model's V2
inference (switchyard.common.recsys: one contract for this route, V2 clients and recsys jobs).
Scope ``v2``: these are the realtime lane's routes. Nothing is stored but the request log's row.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from switchyard.api import request_log
from switchyard.api.auth import require
from switchyard.api.deps import Resources, resources_of
from switchyard.api.errors import ApiError
from switchyard.api.jobs.service import find_model
from switchyard.api.v2.gateway import Answer
from switchyard.common import tracing
from switchyard.common.contracts import RecommendationRequest, RecommendationResponse, RecsysEventCreate, RecsysEventType
from switchyard.common.recsys import from_v2_json, v2_json
from switchyard.common.shadow.spec import V2Call
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.dataplane import model_path
from switchyard.common.v2.errors import V2Error, error_message

DOMAIN = "recsys"
JSON = {"content-type": "application/json"}
EVENTS_PATH = "/recsys/events"


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    param: str | None = None
    details: list[Any] | None = None


class ErrorResponse(BaseModel):
    """The platform's one error shape (switchyard.api.errors)."""

    error: ErrorDetail


class RecsysEventAccepted(BaseModel):
    accepted: Literal[True] = True
    user_id: int
    item_id: int
    event_type: RecsysEventType


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "invalid JSON, or input the worker refused (e.g. an unknown item)", 401: "no valid API key", 403: "the key lacks the v2 scope",
            404: "no recsys ranker of that name", 413: "body too large", 422: "malformed body (unknown fields, wrong types, limits)",
            429: "over the key's request rate", 503: "the recsys worker or its feature store is unavailable (Retry-After)",
            504: "the recsys worker did not answer in time"}
    return {s: {"model": ErrorResponse, "description": what[s]} for s in statuses}


router = APIRouter(prefix="/v1", tags=["recsys"], dependencies=[Depends(require("v2"))])


def _resources(request: Request) -> Resources:
    return resources_of(request.scope)


@router.post("/recommendations", response_model=RecommendationResponse, responses=_errors(400, 401, 403, 404, 413, 422, 429, 503, 504))
async def recommendations(request: Request, body: RecommendationRequest) -> Response:
    """The user's top ``k`` items (of ``candidates`` when given), with scores and the reason each was
    chosen; an unknown user gets the popularity fallback (``fallback: true``)."""
    return Response(await recommend(_resources(request), body), media_type="application/json")


async def recommend(res: Resources, body: RecommendationRequest) -> bytes:
    """The answer's JSON for a validated request, else ApiError: the route's work, shared with its
    fast path (switchyard.api.recsys.fast_path), which most requests take."""
    # A ranker of the recsys domain, else 404 (the record names it, or "unknown": never client text).
    model = find_model(res, body.model, DOMAIN, "ranker")
    assert isinstance(model, V2Model)  # rankers are V2 models (switchyard.common.v2.config)
    tracing.annotate(**{"switchyard.model": model.name})
    rec = request_log.current()
    rec.params = {"k": body.k, "exclude_seen": body.exclude_seen, "candidates": len(body.candidates) if body.candidates is not None else 0}
    request = json.dumps(v2_json(body), separators=(",", ":")).encode()
    served = res.v2.canary_pick(model, None)  # the model, or its canary candidate (then named in the answer's ``model``)
    started = time.perf_counter()
    try:
        answer = await _forward(res, model_path(served.name, None) + "/infer", request, served.name, candidate=served is not model)
    except ApiError as e:
        res.v2.canary_done(model, served, started, e.status)
        raise
    res.v2.canary_done(model, served, started, answer.status)
    if served is model:
        res.v2.offer_shadow(model, V2Call(protocol="rest", body=request, headers=JSON), answer.body, answer.headers, started)
    try:
        out = from_v2_json(body.user_id, json.loads(answer.body))
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
        raise ApiError(502, "bad_worker_answer", f"the {DOMAIN} worker answered {model.name}'s inference in a form Switchyard cannot read") from None
    if rec.items is None:  # the worker's count when it sends one (x-switchyard-items), else what it returned
        rec.items = len(out.items)
    # Serialized here, from the items just validated: FastAPI would validate them a second time.
    answer_model = RecommendationResponse.model_construct(user_id=out.user_id, items=out.items, fallback=out.fallback, unknown_items=out.unknown_items,
                                                          model=served.name)
    return answer_model.model_dump_json().encode()


@router.post("/recsys/events", status_code=202, response_model=RecsysEventAccepted, responses=_errors(400, 401, 403, 413, 422, 429, 503, 504))
async def recsys_event(request: Request, body: RecsysEventCreate) -> RecsysEventAccepted:
    """Push one interaction to the feature store's online views: the user's next recommendations see it."""
    await _forward(_resources(request), EVENTS_PATH, body.model_dump_json().encode(), None)
    return RecsysEventAccepted(user_id=body.user_id, item_id=body.item_id, event_type=body.event_type)


async def _forward(res: Resources, path: str, body: bytes, model: str | None, *, candidate: bool = False) -> Answer:
    """POST ``body`` to the recsys worker's ``path``: its 2xx answer, else the platform's error
    (``candidate``: a canary's request, whose 5xx does not count against the worker's breaker)."""
    if DOMAIN not in res.v2.workers:
        raise ApiError(503, "unavailable", f"no {DOMAIN} worker is configured (SWITCHYARD_V2_UPSTREAMS)", headers={"Retry-After": "30"})
    try:
        answer = await res.v2.forward_http(DOMAIN, path, body, JSON, candidate=candidate)
    except V2Error as e:  # unreachable, timed out, or its breaker is open
        raise worker_error(e.status, e.message, e.headers, model) from None
    if answer.status >= 300:
        raise worker_error(answer.status, error_message(answer.body, f"the {DOMAIN} worker answered HTTP {answer.status}"), answer.headers, model)
    return answer


def worker_error(status: int, message: str, headers: dict[str, str], model: str | None) -> ApiError:
    """The platform's error for a failure of the recsys worker (or of the hop to it): its 4xx as they
    are, with its message; unavailable (down, breaker open, feature store down) as 503 with its
    Retry-After; a timeout as 504; anything else (its 5xx, a route it lacks) as 502."""
    retry = next((v for k, v in headers.items() if k.lower() == "retry-after"), "1")
    retry = retry if retry.isdigit() else "1"  # seconds, as every Switchyard Retry-After
    if status == 503:
        return ApiError(503, "unavailable", message, headers={"Retry-After": retry})
    if status == 504:
        return ApiError(504, "timeout", message)
    if status == 429:
        return ApiError(429, "overloaded", message, headers={"Retry-After": retry})
    if status == 404:  # the catalog names a model the worker does not serve (or the worker lacks the route)
        return ApiError(404, "model_not_found", message, param="model") if model is not None else ApiError(502, "worker_error", message)
    if 400 <= status < 500:
        return ApiError(status, "invalid_input", message)
    return ApiError(502, "worker_error", message)

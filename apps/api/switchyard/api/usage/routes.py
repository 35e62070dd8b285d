"""``GET /v1/usage``: tokens, requests and items per tenant and model over a period, from the
request log's rows (``requests``; switchyard.api.request_log). Any key may read its own tenant's;
an admin key every tenant's (``tenant=`` narrows it)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from switchyard.api.auth import Caller
from switchyard.api.deps import Res
from switchyard.api.errors import ApiError
from switchyard.common.db.store import RequestStore

# No auth dependency: KeyFirst already refused a /v1 request without a valid key (401); any scope will do.
router = APIRouter(prefix="/v1", tags=["usage"])

DEFAULT_WINDOW = dt.timedelta(hours=24)
MAX_WINDOW = dt.timedelta(days=92)
# Times outside this range are refused (422): near datetime's own limits, a time zone's offset or the
# default window would overflow it (0001-01-01T00:01-00:03 was a 500, found by the fuzz test).
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


class UsageRow(BaseModel):
    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    items: int


class UsageReport(BaseModel):
    object: str = "usage"
    start: dt.datetime
    end: dt.datetime
    data: list[UsageRow]


def aware(t: dt.datetime, param: str) -> dt.datetime:
    if t.tzinfo is None:
        raise ApiError(422, "invalid_window", f"{param} needs a time zone (e.g. 2026-12-01T00:00:00Z)", param=param)
    try:
        in_range = EARLIEST <= t.astimezone(dt.UTC) <= LATEST
    except OverflowError:
        in_range = False
    if not in_range:
        raise ApiError(422, "invalid_window", f"{param} must lie between {EARLIEST.year} and {LATEST.year}", param=param)
    return t


@router.get("/usage", response_model=UsageReport)
async def usage(
    res: Res,
    caller: Caller,
    start: Annotated[dt.datetime | None, Query(description="ISO 8601 with a time zone; default: end minus 24 h")] = None,
    end: Annotated[dt.datetime | None, Query(description="ISO 8601 with a time zone; default: now")] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    tenant: Annotated[str | None, Query(max_length=64, description="admin keys only")] = None,
) -> UsageReport:
    """Per tenant and model in [start, end): requests, prompt/completion/total tokens, items (images classified, items recommended)."""
    end = aware(end, "end") if end is not None else dt.datetime.now(dt.UTC)
    start = aware(start, "start") if start is not None else end - DEFAULT_WINDOW
    if start >= end:
        raise ApiError(422, "invalid_window", "start must be before end", param="start")
    if end - start > MAX_WINDOW:
        raise ApiError(422, "invalid_window", f"the window may span at most {MAX_WINDOW.days} days", param="start")
    if tenant is not None and not caller.is_admin and tenant != caller.tenant:
        raise ApiError(403, "insufficient_scope", "only an admin key may read another tenant's usage", param="tenant")
    rows = await RequestStore(res.store.engine).usage(start, end, tenant if caller.is_admin else caller.tenant, model)
    return UsageReport(start=start, end=end, data=[
        UsageRow(tenant=r.tenant, model=r.model, requests=int(r.requests), prompt_tokens=int(r.prompt_tokens), completion_tokens=int(r.completion_tokens),
                 total_tokens=int(r.prompt_tokens) + int(r.completion_tokens), items=int(r.items)) for r in rows])

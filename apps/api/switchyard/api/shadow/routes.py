"""``GET /v1/shadow/{model}``: how a model's shadow candidates compare with it (docs/shadow.md), from
the shadow worker's rows. Admin scope: the figures cover every tenant's sampled traffic (numbers
only: no request content is kept)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from switchyard.api.auth import require
from switchyard.api.deps import Res
from switchyard.api.errors import ApiError
from switchyard.api.usage.routes import aware
from switchyard.common.db.shadow_store import ShadowStore
from switchyard.common.shadow.spec import COMPARISON_OF

router = APIRouter(prefix="/v1/shadow", tags=["shadow"], dependencies=[Depends(require("admin"))])


class CandidateReport(BaseModel):
    candidate: str
    # Cases replayed on the candidate in the window: compared, or the candidate failed.
    samples: int
    compared: int
    candidate_failed: int
    # Means over compared cases, 0..1 (null where the domain has no such metric): vision top-1
    # agreement and top-5 overlap, recsys top-1 agreement and top-k overlap, LLM ROUGE-L F1.
    top1_agreement: float | None
    topk_overlap: float | None
    text_similarity: float | None
    # Latencies (ms): primary as the client got it, candidate as the shadow worker called it.
    primary_p50_ms: float | None
    candidate_p50_ms: float | None
    delta_p50_ms: float | None
    delta_p95_ms: float | None
    # LLM only: time to first token and completion tokens.
    primary_ttft_p50_ms: float | None
    candidate_ttft_p50_ms: float | None
    primary_tokens_mean: float | None
    candidate_tokens_mean: float | None
    first: dt.datetime
    last: dt.datetime


class ShadowReport(BaseModel):
    object: str = "shadow.report"
    model: str
    domain: str
    # The model's shadow as the catalog declares it now (null: none).
    candidate: str | None
    sample_rate: float | None
    comparison: str | None
    since: dt.datetime | None
    data: list[CandidateReport]


@router.get("/{model:path}", response_model=ShadowReport)
async def shadow_report(
    res: Res, model: str,
    since: Annotated[dt.datetime | None, Query(description="ISO 8601 with a time zone; default: every retained case")] = None,
) -> ShadowReport:
    m = res.catalog.current.model(model)
    if m is None:
        raise ApiError(404, "model_not_found", f"The model {model!r} does not exist", param="model")
    if since is not None:
        since = aware(since, "since")
    rows = await ShadowStore(res.store.engine).report(m.name, since)
    sh = m.shadow
    return ShadowReport(model=m.name, domain=m.domain, candidate=sh.candidate if sh else None, sample_rate=sh.sample_rate if sh else None,
                        comparison=(sh.compare or COMPARISON_OF[m.domain]) if sh else None, since=since,
                        data=[CandidateReport.model_validate({k: v for k, v in r.items() if k != "domain"}) for r in rows])

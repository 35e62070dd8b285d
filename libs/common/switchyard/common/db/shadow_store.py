"""The ``shadow_results`` table: the shadow worker's rows and the report ``GET /v1/shadow/{model}`` gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, cast, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db.models import ShadowResult
from switchyard.common.shadow.spec import ShadowComparison


def _median(col: Any) -> Any:
    return func.percentile_cont(0.5).within_group(col)


class ShadowStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(self, c: ShadowComparison, tenant: str | None) -> None:
        """One row per case: a retried activity does not count its case twice."""
        values = c.model_dump(exclude={"case_id"}) | {"case_id": c.case_id, "tenant": tenant}
        async with self.engine.begin() as conn:
            await conn.execute(insert(ShadowResult).values(**values).on_conflict_do_nothing(index_elements=[ShadowResult.case_id]))

    async def report(self, model: str, since: dt.datetime | None) -> list[dict[str, Any]]:
        """Per candidate the model had in the window: counts, mean agreement, median latencies and deltas."""
        r = ShadowResult
        compared = r.outcome == "compared"
        delta = r.candidate_ms - r.primary_ms
        q = (select(r.candidate, r.domain, func.count().label("samples"),
                    func.count().filter(compared).label("compared"),
                    func.count().filter(r.outcome == "candidate_failed").label("candidate_failed"),
                    func.avg(r.top1_agreement).label("top1_agreement"), func.avg(r.topk_overlap).label("topk_overlap"),
                    func.avg(r.text_similarity).label("text_similarity"),
                    _median(r.primary_ms).label("primary_p50_ms"), _median(r.candidate_ms).label("candidate_p50_ms"),
                    _median(delta).label("delta_p50_ms"), func.percentile_cont(0.95).within_group(delta).label("delta_p95_ms"),
                    _median(r.primary_ttft_ms).label("primary_ttft_p50_ms"), _median(r.candidate_ttft_ms).label("candidate_ttft_p50_ms"),
                    func.avg(cast(r.primary_tokens, Float)).label("primary_tokens_mean"),
                    func.avg(cast(r.candidate_tokens, Float)).label("candidate_tokens_mean"),
                    func.min(r.created_at).label("first"), func.max(r.created_at).label("last"))
             .where(r.model == model, *([r.created_at >= since] if since is not None else []))
             .group_by(r.candidate, r.domain).order_by(func.max(r.created_at).desc()))
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in await conn.execute(q)]

    async def purge(self, older_than: dt.datetime) -> int:
        async with self.engine.begin() as conn:
            return (await conn.execute(delete(ShadowResult).where(ShadowResult.created_at < older_than))).rowcount

"""Shadow deployment of LLM models (docs/shadow.md): a finished job its workflow sampled becomes a
case on the ``shadow`` task queue, with the engine's input (after the model's PII policy, exactly
what the primary engine got) and the primary's answer and timings."""

from __future__ import annotations

from temporalio import activity

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.catalog import CatalogHolder
from switchyard.common.metrics import SHADOW_CASES
from switchyard.common.model_registry import ModelEntry
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.common.shadow.mirror import send
from switchyard.common.shadow.spec import LlmCall, ShadowCase, ShadowOffer


class ShadowOffers:
    def __init__(self, books: JobBookkeeping, catalog: CatalogHolder, budget: ShadowBudget, max_bytes: int) -> None:
        self.books, self.catalog, self.budget, self.max_bytes = books, catalog, budget, max_bytes

    @activity.defn(name="shadow.offer")
    async def offer(self, offer: ShadowOffer) -> str:
        """Send the case (or drop it, counted); the outcome of ``switchyard_shadow_cases``."""
        spec, out = offer.spec, offer.outcome
        entry = ModelEntry.model_validate((spec.model_spec or {})["llm"])
        assert entry.shadow is not None  # the workflow samples only models with a shadow
        candidate = self.catalog.current.registry.get(entry.shadow.candidate)
        if candidate is None:  # removed by a reload since the job was accepted
            SHADOW_CASES.labels(model=entry.name, outcome="failed").inc()
            return "failed"
        result, usage, timings = out.result or {}, out.usage, out.timings
        case = ShadowCase(case_id=spec.job_id, domain="llm", model=entry.name, candidate=candidate.name, candidate_spec=candidate.model_dump(mode="json"),
                          request_id=spec.request_id, primary_ms=(timings.total_ms if timings and timings.total_ms else 0.0),
                          llm=LlmCall(input=await self.books.job_input(spec), text=str(result.get("text", "")),
                                      completion_tokens=usage.completion_tokens if usage else 0, ttft_ms=timings.ttft_ms if timings else None))
        return await send(activity.client(), self.budget, case, self.max_bytes)

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
from switchyard.common.shadow.mirror import llm_case, send
from switchyard.common.shadow.spec import ShadowOffer


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
        return await send(activity.client(), self.budget, llm_case(spec, out, entry, candidate, await self.books.job_input(spec)), self.max_bytes)

"""``/v1/models``: every model of the catalog, every domain, as OpenAI model cards."""

from __future__ import annotations

from switchyard.api.deps import Resources
from switchyard.api.openai.responses import ModelCard


def model_cards(res: Resources) -> dict[str, ModelCard]:
    """By name; V2 models too (their name is what jobs use)."""
    owners = {m.name: m.owned_by for m in res.registry.models} | {m.name: "switchyard" for m in res.v2.config.models}
    return {name: ModelCard(id=name, created=res.started_at, owned_by=owner) for name, owner in owners.items()}

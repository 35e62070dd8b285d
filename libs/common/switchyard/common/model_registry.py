"""LLM models of the catalog (switchyard.common.catalog): public name → kind and engine endpoints.

The first endpoint of a model is preferred; the rest are its fallbacks, tried in order when an
endpoint fails before producing output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from switchyard.common.pii import PiiPolicy
from switchyard.common.queues import Domain
from switchyard.common.shadow.spec import ShadowSpec

# Engines with an LLM adapter (switchyard.common.engines.factory.ADAPTERS).
LLM_ENGINES = ("llamacpp", "vllm", "sglang")


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: Literal["llamacpp", "vllm", "sglang"]
    url: str
    # The name the engine itself serves the model under.
    engine_model: str = Field(min_length=1)
    # Adapter options, e.g. {"priority_scheduling": true} or {"request": {...extra body fields}}.
    params: dict[str, Any] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        AnyHttpUrl(v)
        return v.rstrip("/")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    domain: Domain
    kind: Literal["chat", "embedding"] = "chat"
    # Tokens a request may use in total (prompt + completion), per sequence.
    context_length: int = Field(default=2048, ge=128)
    owned_by: str = "switchyard"
    endpoints: list[Endpoint] = Field(min_length=1)
    # What the engine gets of text with PII (switchyard.common.pii): placeholders (redact), a 4xx
    # (block) or the raw text (pass). What is stored or logged is redacted whatever the policy.
    pii: PiiPolicy = "redact"
    # Shadow deployment (docs/shadow.md): a share of answered requests replayed on a candidate.
    shadow: ShadowSpec | None = None


class ModelRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry]

    @model_validator(mode="after")
    def _unique(self) -> ModelRegistry:
        names = [m.name for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate model names: {sorted(dupes)}")
        return self

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

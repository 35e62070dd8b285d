"""Model registry: public model names → domain, engine and engine URL; validated at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchyard.common.queues import Domain


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    domain: Domain
    engine: Literal["llamacpp", "vllm", "sglang", "triton", "onnxruntime", "feast"]
    url: str
    # The name the engine itself serves the model under.
    engine_model: str
    context_length: int = Field(default=2048, ge=128)
    params: dict[str, Any] = {}


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


class _RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")
    model_registry: Path


@lru_cache(maxsize=1)
def load_registry() -> ModelRegistry:
    """Read the file named by ``SWITCHYARD_MODEL_REGISTRY`` (JSON); a bad file stops start-up."""
    path = _RegistrySettings().model_registry  # type: ignore[call-arg]
    return ModelRegistry.model_validate_json(path.read_text())

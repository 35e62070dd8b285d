from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import V2Upstream
from switchyard.common.worker_settings import DomainWorkerSettings


class ShadowWorkerSettings(DomainWorkerSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str = "shadow"
    # Few at once: shadow work shares engines and cores with live traffic.
    max_concurrent_activities: int = Field(default=2, ge=1, le=256)
    # Domain → its worker's V2 endpoint, JSON in SWITCHYARD_V2_UPSTREAMS (as the API's): V2
    # candidates (vision, recsys) are called there, LLM candidates at their engines.
    v2_upstreams: dict[str, V2Upstream] = {}
    # Deadline of one candidate call.
    shadow_timeout_s: float = Field(default=60.0, gt=0)
    engine_timeout_s: float = Field(default=300.0, gt=0)
    metrics_port: int = Field(default=9105, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9115, ge=0, le=65535)

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import CommonSettings


class WorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str = "llm"
    # Concurrent generations on this worker; match the engine's parallel slots.
    max_concurrent_activities: int = Field(default=4, ge=1, le=256)
    engine_timeout_s: float = Field(default=600.0, gt=0)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9112, ge=0, le=65535)
    # Health probe of every catalog endpoint (switchyard_engine_up).
    engine_probe_every_s: float = Field(default=5.0, gt=0)

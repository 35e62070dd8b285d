from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.worker_settings import DomainWorkerSettings


class WorkerSettings(DomainWorkerSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str = "llm"
    # Concurrent generations on this worker; match the engine's parallel slots.
    max_concurrent_activities: int = Field(default=4, ge=1, le=256)
    engine_timeout_s: float = Field(default=600.0, gt=0)
    # Out-of-memory answers of one endpoint before a job goes to its model's next endpoint
    # (SWITCHYARD_LLM_OOM_SWITCH_AFTER); the attempts between wait the LLM retry policy's backoff.
    llm_oom_switch_after: int = Field(default=2, ge=1)
    # Circuit breaker per engine endpoint: opens after this many failures in a row (unreachable,
    # timeout, 5xx), lets one probe through after engine_breaker_reset_s.
    engine_breaker_fail_max: int = Field(default=5, ge=1)
    engine_breaker_reset_s: float = Field(default=5.0, gt=0)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9112, ge=0, le=65535)
    # Health probe of every catalog endpoint (switchyard_engine_up).
    engine_probe_every_s: float = Field(default=5.0, gt=0)

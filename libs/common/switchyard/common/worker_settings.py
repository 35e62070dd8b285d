"""The settings every domain worker has; each worker's class gives its own defaults (task queue, ports)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import CommonSettings


class DomainWorkerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str
    # Activities run at once on this worker.
    max_concurrent_activities: int = Field(default=4, ge=1, le=256)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(ge=0, le=65535)
    temporal_metrics_port: int = Field(ge=0, le=65535)
    # Spot recovery (switchyard.common.drain): the instance metadata service's base URL (AWS IMDS
    # format, e.g. http://169.254.169.254), polled for an interruption notice; empty = not polled.
    spot_metadata_url: str = ""
    # How often it is polled (the cloud's notice comes about two minutes ahead).
    spot_poll_interval_s: float = Field(default=2.0, gt=0, le=60)

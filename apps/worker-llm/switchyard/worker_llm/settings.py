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

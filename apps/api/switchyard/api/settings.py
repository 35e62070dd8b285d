from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.priority import PriorityValue
from switchyard.common.settings import CommonSettings


class ApiSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Largest request body accepted (Nginx enforces the same limit at the edge).
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Keep-alive comment interval on SSE and ping interval on WebSocket.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    # Beyond this many unfinished jobs for one model, new work gets 429 + Retry-After.
    max_pending_per_model: int = Field(default=512, ge=1)
    # API key → priority tier ("high"/"normal"/"low" or 1..5), JSON in SWITCHYARD_API_KEY_TIERS.
    api_key_tiers: dict[str, PriorityValue] = {}

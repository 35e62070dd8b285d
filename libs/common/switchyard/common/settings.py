"""Settings shared by every Switchyard process, read from the environment (prefix ``SWITCHYARD_``).

Each process builds its settings once, at its entry point (``__main__``), and passes them down;
no other module reads the environment.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchyard.common.catalog import CatalogSettings
from switchyard.common.pii import PiiSettings


class V2Upstream(BaseModel):
    """A domain worker's KServe V2 endpoint (realtime lane; gRPC calls use its gRPC tunnel)."""

    http: str  # base URL, e.g. http://127.0.0.1:8110


class CommonSettings(BaseSettings, CatalogSettings, PiiSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    # asyncpg DSN understood by SQLAlchemy.
    postgres_dsn: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # How long a finished job's event stream stays readable (replay, late reconnects).
    event_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Upper bound of events kept per job stream (tokens included).
    event_stream_maxlen: int = Field(default=100_000, ge=100)
    log_level: str = "INFO"
    # Encryption at rest (switchyard.common.payload_codec): Temporal payloads and sealed job input.
    # Key id → base64 of a 32-byte key (JSON); new data uses payload_key_id, the others stay
    # readable (rotation). Required: every process refuses to start without a usable key.
    payload_keys: dict[str, SecretStr] = {}
    payload_key_id: str = ""
    # Traces (switchyard.common.tracing): an OTLP/HTTP collector's base URL (e.g. http://127.0.0.1:4318);
    # none = no traces, at no cost. The standard OTEL_EXPORTER_OTLP_ENDPOINT is read too; this one wins.
    otlp_endpoint: str = ""
    otel_exporter_otlp_endpoint: str = Field(default="", validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # Share of new traces kept (a continued trace follows its caller's choice).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # Shadow deployment (docs/shadow.md): cases waiting or being compared at once, platform-wide
    # (beyond it a sampled request is dropped, and counted), and the most bytes of request and
    # answer one case may carry (it travels as a Temporal payload).
    shadow_max_backlog: int = Field(default=32, ge=0, le=100_000)
    shadow_max_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from switchyard.common.quotas import DEFAULT_TIER_LIMITS, Limits
from switchyard.common.settings import CommonSettings, V2Upstream


class ApiSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API processes (uvicorn workers). Their metrics go to one page (prometheus-client multiprocess
    # mode, docs/metrics.md); process i's Temporal SDK page is on temporal_metrics_port + i.
    api_workers: int = Field(default=1, ge=1, le=64)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off), never behind Nginx.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9111, ge=0, le=65535)
    # How often each API process refreshes the task-queue backlog and breaker gauges.
    gauges_every_s: float = Field(default=5.0, gt=0)
    # Largest request body accepted (Nginx enforces the same limit at the edge).
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Keep-alive comment interval on SSE and ping interval on WebSocket.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    # Fast start (docs/llm-speed.md): a completion accepted while its model has at most this many
    # unfinished jobs (itself included) is started by the API at once, its workflow adopting the run;
    # 0 = off. Match the model's engine slots (the LLM worker's max_concurrent_activities).
    llm_fast_start_max_backlog: int = Field(default=4, ge=0)
    # Runs at once per API process, and their engine read timeout (as the LLM worker's).
    llm_fast_start_max_runs: int = Field(default=64, ge=1)
    llm_engine_timeout_s: float = Field(default=600.0, gt=0)
    # Out-of-memory answers of one endpoint before a job moves on (as the LLM worker's, same variable).
    llm_oom_switch_after: int = Field(default=2, ge=1)
    # Beyond this many unfinished jobs for one model, new work gets 429 + Retry-After.
    max_pending_per_model: int = Field(default=512, ge=1)
    # Server secret API keys are hashed with (HMAC-SHA256; switchyard.common.keys). Required to
    # serve: without it no key could be checked. Changing it invalidates every key.
    key_pepper: SecretStr = SecretStr("")
    # KServe V2 gRPC ingress (Nginx forwards its gRPC port here).
    grpc_port: int = 8001
    # Domain → its worker's V2 endpoints, JSON in SWITCHYARD_V2_UPSTREAMS.
    v2_upstreams: dict[str, V2Upstream] = {}
    # Realtime-lane deadline per request, and the circuit breaker per worker endpoint.
    v2_timeout_s: float = Field(default=10.0, gt=0)
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=5.0, gt=0)
    # Retention (docs/security.md): a job that ended longer ago than this loses its content (input,
    # result, event stream, Temporal history); every API process checks every purge_every_s.
    retention_s: int = Field(default=30 * 24 * 3600, ge=1)
    # The request log's rows (accounting: no content) are deleted this long after the request.
    request_log_retention_s: int = Field(default=400 * 24 * 3600, ge=1)
    purge_every_s: float = Field(default=60.0, gt=0)
    # Per-key limits by tier (a key's own columns override them; switchyard.common.quotas), JSON in
    # SWITCHYARD_TIER_QUOTAS, e.g. {"normal": {"rps": 100, "max_streams": 32, "tpm": 500000}}; a
    # tier left out, or a limit left null, is unlimited.
    tier_quotas: dict[str, Limits] = Field(default_factory=lambda: dict(DEFAULT_TIER_LIMITS))

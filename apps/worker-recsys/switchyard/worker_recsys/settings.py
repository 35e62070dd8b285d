from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.worker_settings import DomainWorkerSettings


class RecsysSettings(DomainWorkerSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str = "recsys"
    # Triton's HTTP endpoint (KServe V2 REST); the ``triton`` backend of recsys-rank-triton runs there.
    triton_url: str = "127.0.0.1:8100"
    triton_timeout_s: float = Field(default=10.0, gt=0)
    # item_embeddings.npy, popular_items.json, training_report.json, ranker.onnx (build-support/setup-recsys.sh).
    recsys_model_dir: Path = Path(".cache/switchyard/recsys/models")
    # The Feast repo and the three ${VAR}s its feature_store.yaml names (docs/recsys.md, "Environment").
    feast_repo: Path = Path("infra/feast")
    feast_registry_dsn: str = "postgresql+psycopg://postgres@127.0.0.1:5432/switchyard_feast"
    feast_redis: str = "127.0.0.1:6379"
    recsys_data: Path = Path(".cache/switchyard/recsys/data")
    # A user's read answers in ~1-2 ms (docs/recsys.md); past this the store counts as failing.
    feast_timeout_s: float = Field(default=0.5, gt=0)
    feast_push_timeout_s: float = Field(default=2.0, gt=0)
    # Consecutive failures that open the feature store's breaker, and how long it stays open.
    feast_breaker_fail_max: int = Field(default=3, ge=1)
    feast_breaker_reset_s: float = Field(default=5.0, gt=0)
    # Item features come from a cache in this process, re-read from Feast this often.
    recsys_item_refresh_s: float = Field(default=60.0, ge=1)
    # Candidates retrieval hands to the ranker when a request gives none (the ranker trained on 200,
    # docs/recsys.md measured 100).
    recsys_retrieve: int = Field(default=100, ge=1, le=1000)
    # This worker's own KServe V2 endpoints (the realtime lane; the API forwards to them) and
    # POST /recsys/events on the HTTP port.
    recsys_host: str = "127.0.0.1"
    recsys_http_port: int = 8120
    recsys_grpc_port: int = 8121
    # Largest V2 request body (1,000 candidates as JSON are ~10 KB).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Users per durable-lane step (progress is published after each).
    recsys_job_chunk: int = Field(default=50, ge=1, le=1000)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off).
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9114, ge=0, le=65535)

    def feast_env(self) -> dict[str, str]:
        """The variables infra/feast/feature_store.yaml and definitions.py expand."""
        return {"SWITCHYARD_FEAST_REGISTRY_DSN": self.feast_registry_dsn, "SWITCHYARD_FEAST_REDIS": self.feast_redis,
                "SWITCHYARD_RECSYS_DATA": str(self.recsys_data)}

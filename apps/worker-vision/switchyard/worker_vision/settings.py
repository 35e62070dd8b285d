from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.worker_settings import DomainWorkerSettings


class VisionSettings(DomainWorkerSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    task_queue: str = "vision"
    # Triton's HTTP endpoint (KServe V2 REST); the ``triton`` backends of the V2 models run there.
    triton_url: str = "127.0.0.1:8100"
    triton_timeout_s: float = Field(default=30.0, gt=0)
    # Triton inputs through shared memory when Triton runs on this host (switchyard.common.v2.triton_shm):
    # slots = requests in flight that can use it (0 turns it off); a slot holds a batch-1 input.
    triton_shm_slots: int = Field(default=16, ge=0, le=1024)
    triton_shm_slot_bytes: int = Field(default=1024 * 1024, ge=4096)
    # ONNX files and imagenet_labels.txt, as build-support/setup-vision.sh lays them out.
    vision_model_dir: Path = Path(".cache/switchyard/vision/models")
    # "auto": the GPU pipeline when a CUDA device is visible, else the CPU pipeline.
    vision_preprocess_device: Literal["auto", "cpu", "gpu"] = "auto"
    vision_preprocess_threads: int = Field(default=2, ge=1, le=64)
    # This worker's own KServe V2 endpoints (the realtime lane; the API forwards to them).
    vision_host: str = "127.0.0.1"
    vision_http_port: int = 8110
    vision_grpc_port: int = 8111
    # Largest V2 request body (the API enforces the same limit in front).
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Images per durable-lane step (progress is published after each).
    vision_job_chunk: int = Field(default=8, ge=1, le=256)
    # This process's /metrics page and its Temporal SDK's page (docs/metrics.md; 0 = off).
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    temporal_metrics_port: int = Field(default=9113, ge=0, le=65535)

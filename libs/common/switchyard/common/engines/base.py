"""The engine interface every LLM backend adapter implements (backend-agnostic inference).

An adapter is a small dialect over one engine's HTTP API: how to stream a generation, embed,
count tokens, read health and load metrics, and classify the engine's errors. Engine clients
never retry: Temporal owns retries, and the worker falls back along a model's endpoint list.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from switchyard.common.contracts import LlmInput, Usage

# Engine servers close a connection idle for 5 s (llama.cpp's HTTP library, vLLM's uvicorn): a client
# that keeps one as long (httpx's default) may reuse it just as the server closes it, and that request
# fails (the soak sends embeddings every 5 s). Engine clients drop theirs a second sooner, no more: at
# 2 s, reconnecting cost the chat lane +27 ms TTFT in `bench ab` (docs/llm-speed.md).
ENGINE_KEEPALIVE_EXPIRY_S = 4.0


@dataclass
class Chunk:
    """A piece of one choice's output: new text, and at the end finish_reason/usage."""

    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass
class EngineMetrics:
    waiting: float | None = None  # requests queued inside the engine
    running: float | None = None  # requests being generated
    kv_cache_usage: float | None = None  # 0..1


class EngineError(Exception):
    """An engine refused or failed a request. ``retryable`` says whether another try can help."""

    def __init__(self, status: int, message: str, *, kind: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(f"engine answered {status}: {message}")
        self.status = status
        self.message = message
        self.kind = kind or ("EngineRejected" if 400 <= status < 500 else "EngineError")
        self.retryable = retryable if retryable is not None else not (400 <= status < 500 and status not in (408, 429))


def parse_prometheus(text: str, names: dict[str, str]) -> dict[str, float]:
    """Pick gauges out of a Prometheus text page: {our_name: value} for each engine metric name."""
    out: dict[str, float] = {}
    for ours, theirs in names.items():
        m = re.search(rf"^{re.escape(theirs)}(?:{{[^}}]*}})?\s+([-+0-9.eE]+|NaN)$", text, re.M)
        if m and m.group(1) != "NaN":
            out[ours] = float(m.group(1))
    return out


class Engine(abc.ABC):
    """One engine endpoint (base URL) serving ``engine_model``."""

    name: ClassVar[str]
    # Optional request features this engine honours: "logprobs", "seed", "priority", "embeddings".
    capabilities: ClassVar[frozenset[str]] = frozenset()
    metric_names: ClassVar[dict[str, str]] = {}

    def __init__(self, url: str, engine_model: str, http: httpx.AsyncClient, params: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.engine_model = engine_model
        self.http = http
        self.params = params or {}

    @abc.abstractmethod
    def stream(self, inp: LlmInput, *, seed: int | None, priority: int | None = None) -> AsyncIterator[Chunk]:
        """Generate one choice, streaming."""

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        raise EngineError(400, f"{self.name} endpoint {self.url} does not serve embeddings", kind="Unsupported")

    @abc.abstractmethod
    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the engine's own tokenizer."""

    async def health(self) -> bool:
        try:
            return (await self.http.get(f"{self.url}/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def metrics(self) -> EngineMetrics:
        r = await self.http.get(f"{self.url}/metrics", timeout=2.0)
        r.raise_for_status()
        return EngineMetrics(**parse_prometheus(r.text, self.metric_names))

"""llama.cpp server (``llama-server`` / xllamacpp): OpenAI API plus its native extras."""

from __future__ import annotations

from typing import Any, ClassVar

from switchyard.common.contracts import LlmInput
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.oom import classify_oom
from switchyard.common.engines.openai_compat import OpenAICompatibleEngine, post_json


class LlamaCppEngine(OpenAICompatibleEngine):
    name = "llamacpp"
    capabilities = frozenset({"logprobs", "seed", "embeddings"})
    metric_names: ClassVar[dict[str, str]] = {
        "waiting": "llamacpp:requests_deferred",
        "running": "llamacpp:requests_processing",
        "kv_cache_usage": "llamacpp:kv_cache_usage_ratio",
    }

    def extra_body(self, inp: LlmInput, priority: int | None) -> dict[str, Any]:
        return {"ignore_eos": True} if inp.ignore_eos else {}

    def classify(self, status: int, message: str) -> EngineError:
        if oom := classify_oom(status, message):  # before the context check: a full KV cache is a 500, not the request's fault
            return oom
        if "context size" in message or "context length" in message:
            return EngineError(400, message, kind="ContextLengthExceeded")
        if status == 503:  # loading, or every slot busy
            return EngineError(status, message, kind="EngineBusy", retryable=True)
        return super().classify(status, message)

    async def count_tokens(self, text: str) -> int:
        return len((await post_json(self.http, f"{self.url}/tokenize", {"content": text}))["tokens"])

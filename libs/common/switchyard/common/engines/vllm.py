"""vLLM's OpenAI server: OpenAI API plus request priority, its tokenizer route and metrics."""

from __future__ import annotations

from typing import Any, ClassVar

from switchyard.common.contracts import LlmInput
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.openai_compat import OpenAICompatibleEngine, post_json


class VllmEngine(OpenAICompatibleEngine):
    name = "vllm"
    capabilities = frozenset({"logprobs", "seed", "priority"})
    metric_names: ClassVar[dict[str, str]] = {
        "waiting": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "kv_cache_usage": "vllm:kv_cache_usage_perc",
    }

    def extra_body(self, inp: LlmInput, priority: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"ignore_eos": True} if inp.ignore_eos else {}
        # vLLM schedules lower values first, like Temporal's priority key; only with
        # `--scheduling-policy priority` (registry param "priority_scheduling": true).
        if priority is not None and self.params.get("priority_scheduling"):
            body["priority"] = priority
        return body

    def classify(self, status: int, message: str) -> EngineError:
        if "maximum context length" in message or "max_model_len" in message:
            return EngineError(400, message, kind="ContextLengthExceeded")
        return super().classify(status, message)

    async def count_tokens(self, text: str) -> int:
        return int((await post_json(self.http, f"{self.url}/tokenize", {"model": self.engine_model, "prompt": text}))["count"])

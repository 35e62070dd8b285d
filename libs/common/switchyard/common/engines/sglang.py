"""SGLang: chat through its OpenAI route (it applies the chat template), raw prompts through its
native ``/generate`` API (cumulative text per step, ``meta_info`` with the finish reason)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from switchyard.common.contracts import LlmInput, Usage
from switchyard.common.engines.base import Chunk, EngineError
from switchyard.common.engines.openai_compat import OpenAICompatibleEngine, error_message, sse_json


def sglang_priority(priority_key: int) -> int:
    """SGLang runs higher ``priority`` first; Temporal's key runs lower first (1..5)."""
    return 6 - priority_key


class SGLangEngine(OpenAICompatibleEngine):
    name = "sglang"
    capabilities = frozenset({"seed", "priority"})
    metric_names: ClassVar[dict[str, str]] = {
        "waiting": "sglang:num_queue_reqs",
        "running": "sglang:num_running_reqs",
        "kv_cache_usage": "sglang:token_usage",
    }

    def extra_body(self, inp: LlmInput, priority: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"ignore_eos": True} if inp.ignore_eos else {}
        # Honoured with `--enable-priority-scheduling` (registry param "priority_scheduling": true).
        if priority is not None and self.params.get("priority_scheduling"):
            body["priority"] = sglang_priority(priority)
        return body

    def classify(self, status: int, message: str) -> EngineError:
        if "context length" in message or "longer than the model" in message:
            return EngineError(400, message, kind="ContextLengthExceeded")
        return super().classify(status, message)

    def sampling_params(self, inp: LlmInput, seed: int | None) -> dict[str, Any]:
        sp: dict[str, Any] = {"max_new_tokens": inp.max_tokens, "temperature": inp.temperature, "top_p": inp.top_p, "ignore_eos": inp.ignore_eos}
        if inp.stop:
            sp["stop"] = inp.stop
        if seed is not None:
            sp["sampling_seed"] = seed
        return sp

    async def stream(self, inp: LlmInput, *, seed: int | None, priority: int | None = None) -> AsyncIterator[Chunk]:
        if inp.messages is not None:
            async for chunk in super().stream(inp, seed=seed, priority=priority):
                yield chunk
            return
        if inp.logprobs:
            raise EngineError(400, "logprobs are not supported on the sglang adapter", kind="Unsupported")
        body: dict[str, Any] = {"text": inp.prompt, "sampling_params": self.sampling_params(inp, seed), "stream": True, **self.extra_body(inp, priority)}
        body.pop("ignore_eos", None)
        seen = 0
        async with self.http.stream("POST", f"{self.url}/generate", json=body) as resp:
            if resp.status_code != 200:
                raise self.classify(resp.status_code, error_message(await resp.aread()))
            async for payload in sse_json(resp):
                if "error" in payload:  # SGLang reports stream errors in-band with status 200
                    raise self.classify(400, error_message(json.dumps(payload).encode()))
                text: str = payload.get("text", "")
                meta = payload.get("meta_info") or {}
                chunk = Chunk(text=text[seen:])  # the text is cumulative
                seen = len(text)
                finish = meta.get("finish_reason")
                if finish:
                    chunk.finish_reason = "length" if finish.get("type") == "length" else "stop"
                    prompt_tokens, completion_tokens = int(meta.get("prompt_tokens", 0)), int(meta.get("completion_tokens", 0))
                    chunk.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
                yield chunk

    async def count_tokens(self, text: str) -> int:
        """SGLang has no tokenizer route: a zero-token generation reports the prompt's length."""
        r = await self.http.post(f"{self.url}/generate", json={"text": text, "sampling_params": {"max_new_tokens": 0}}, timeout=10.0)
        if r.status_code != 200:
            raise self.classify(r.status_code, error_message(r.content))
        return int(r.json()["meta_info"]["prompt_tokens"])

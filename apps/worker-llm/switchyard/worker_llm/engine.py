"""Streaming client for OpenAI-compatible engines (llama.cpp server, vLLM, SGLang).

No retries here: Temporal owns retries. Closing the stream (cancellation) makes the engine
abort the generation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from switchyard.common.contracts import LlmInput, Usage


@dataclass
class Chunk:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class EngineError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"engine answered {status}: {message}")
        self.status = status


@dataclass
class OpenAIEngine:
    base_url: str
    client: httpx.AsyncClient = field(repr=False)

    def _request(self, engine_model: str, inp: LlmInput) -> tuple[str, dict[str, object]]:
        body: dict[str, object] = {
            "model": engine_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": inp.max_tokens,
            "temperature": inp.temperature,
            "top_p": inp.top_p,
        }
        if inp.seed is not None:
            body["seed"] = inp.seed
        if inp.stop:
            body["stop"] = inp.stop
        if inp.ignore_eos:
            body["ignore_eos"] = True
        if inp.messages is not None:
            body["messages"] = [m.model_dump() for m in inp.messages]
            return "/v1/chat/completions", body
        body["prompt"] = inp.prompt
        return "/v1/completions", body

    async def stream(self, engine_model: str, inp: LlmInput) -> AsyncIterator[Chunk]:
        path, body = self._request(engine_model, inp)
        async with self.client.stream("POST", self.base_url.rstrip("/") + path, json=body) as resp:
            if resp.status_code != 200:
                raise EngineError(resp.status_code, (await resp.aread()).decode(errors="replace")[:500])
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                payload = json.loads(data)
                if "error" in payload:
                    raise EngineError(500, json.dumps(payload["error"])[:500])
                chunk = Chunk()
                if payload.get("usage"):
                    chunk.usage = Usage.model_validate(payload["usage"])
                for choice in payload.get("choices") or []:
                    delta = choice.get("delta") or {}
                    chunk.text += delta.get("content") or choice.get("text") or ""
                    chunk.finish_reason = choice.get("finish_reason") or chunk.finish_reason
                yield chunk

"""Shared dialect of engines that speak the OpenAI HTTP API (llama.cpp server, vLLM)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from switchyard.common.contracts import LlmInput, Usage
from switchyard.common.engines.base import Chunk, Engine, EngineError
from switchyard.common.engines.oom import classify_oom


def error_message(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    err = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(err, dict):
        return str(err.get("message") or err)[:500]
    return str(err)[:500]


async def sse_json(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to ``data: [DONE]``."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class OpenAICompatibleEngine(Engine):
    def extra_body(self, inp: LlmInput, priority: int | None) -> dict[str, Any]:
        """Engine-specific request fields (registry ``params`` merged last)."""
        return {}

    def classify(self, status: int, message: str) -> EngineError:
        """The engine's error answer as an EngineError; an out-of-memory one as EngineOutOfMemory."""
        return classify_oom(status, message) or EngineError(status, message)

    def request(self, inp: LlmInput, seed: int | None, priority: int | None) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.engine_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": inp.max_tokens,
            "temperature": inp.temperature,
            "top_p": inp.top_p,
        }
        if seed is not None:
            body["seed"] = seed
        if inp.stop:
            body["stop"] = inp.stop
        if inp.logprobs:
            body["logprobs"] = True
            if inp.top_logprobs is not None:
                body["top_logprobs"] = inp.top_logprobs
        body.update(self.extra_body(inp, priority))
        body.update(self.params.get("request", {}))
        if inp.messages is not None:
            body["messages"] = [m.model_dump() for m in inp.messages]
            return "/v1/chat/completions", body
        body["prompt"] = inp.prompt
        if inp.logprobs:  # the completions API takes the number of top tokens instead
            body["logprobs"] = inp.top_logprobs or 0
            body.pop("top_logprobs", None)
        return "/v1/completions", body

    async def stream(self, inp: LlmInput, *, seed: int | None, priority: int | None = None) -> AsyncIterator[Chunk]:
        path, body = self.request(inp, seed, priority)
        async with self.http.stream("POST", self.url + path, json=body) as resp:
            if resp.status_code != 200:
                raise self.classify(resp.status_code, error_message(await resp.aread()))
            async for payload in sse_json(resp):
                if "error" in payload:
                    err = payload["error"]
                    status = int(err["code"]) if isinstance(err, dict) and str(err.get("code", "")).isdigit() else 500
                    raise self.classify(status, error_message(json.dumps(payload).encode()))
                yield self._chunk(payload)

    @staticmethod
    def _chunk(payload: dict[str, Any]) -> Chunk:
        chunk = Chunk()
        if payload.get("usage"):
            chunk.usage = Usage.model_validate({k: payload["usage"].get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            chunk.text += delta.get("content") or choice.get("text") or ""
            chunk.finish_reason = choice.get("finish_reason") or chunk.finish_reason
            lp = choice.get("logprobs")
            if isinstance(lp, dict) and lp.get("content"):
                chunk.logprobs.extend(lp["content"])
            elif isinstance(lp, dict) and lp.get("tokens"):  # completions format
                chunk.logprobs.extend(
                    {"token": t, "logprob": p, "top_logprobs": [{"token": k, "logprob": v} for k, v in (top or {}).items()]}
                    for t, p, top in zip(lp["tokens"], lp.get("token_logprobs") or [], lp.get("top_logprobs") or [None] * len(lp["tokens"]), strict=False)
                )
        return chunk

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        if "embeddings" not in self.capabilities:
            return await super().embed(texts)
        r = await self.http.post(f"{self.url}/v1/embeddings", json={"model": self.engine_model, "input": texts})
        if r.status_code != 200:
            raise self.classify(r.status_code, error_message(r.content))
        payload = r.json()
        rows = sorted(payload["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in rows], int((payload.get("usage") or {}).get("prompt_tokens", 0))


async def post_json(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
    r = await http.post(url, json=body, timeout=10.0)
    if r.status_code != 200:
        raise EngineError(r.status_code, error_message(r.content))
    return r.json()

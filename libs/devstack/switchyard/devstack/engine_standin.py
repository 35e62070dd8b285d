"""ENGINE STAND-IN: an OpenAI-compatible server that streams made-up tokens at a fixed rate. NOT a
model and NOT an inference engine.

The capacity benchmark (``./switchyard bench capacity``, issue 14) measures how many requests and
tokens per second a gateway carries; a real engine on this 2-core machine would saturate long before
the gateway does. LiteLLM's own published proxy benchmarks use a mock OpenAI endpoint the same way.
Every stream takes the same time: the first token after ``--ttft-ms``, then one token every
``--itl-ms``, ``max_tokens`` tokens in all (finish_reason ``length``), scheduled against absolute
deadlines so that a busy event loop does not stretch the stream. Any number of streams at once.

What it speaks (vLLM's OpenAI server shapes, as the ``vllm`` adapter reads them): ``POST
/v1/chat/completions`` and ``POST /v1/completions`` (streamed SSE chunks with
``stream_options.include_usage``, or whole), ``POST /tokenize`` (``{"count", "tokens",
"max_model_len"}``), ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (vLLM's running/waiting
gauges). Bad input gets a 400 in OpenAI's error shape. A raw ASGI app on uvicorn (uvloop, httptools):
each chunk is a preformatted byte string, so the stand-in's own CPU stays small (the benchmark
samples it).

    python -m switchyard.devstack.engine_standin --port 8095 --ttft-ms 20 --itl-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 1 << 20
MAX_TOKENS_DEFAULT = 16
MAX_MODEL_LEN = 4096


class BadRequest(Exception):
    pass


class EngineStandIn:
    """The ASGI app: ``ttft_s`` to the first token, ``itl_s`` between tokens."""

    def __init__(self, model: str = "engine-standin", ttft_s: float = 0.020, itl_s: float = 0.005) -> None:
        self.model, self.ttft_s, self.itl_s = model, ttft_s, itl_s
        self.running = 0
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if method == "GET" and path == "/health":
                return await _reply(send, 200, b"", b"text/plain")
            if method == "GET" and path == "/v1/models":
                return await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "engine-standin",
                                                                            "max_model_len": MAX_MODEL_LEN}]})
            if method == "GET" and path == "/metrics":
                text = (f"vllm:num_requests_running{{model_name=\"{self.model}\"}} {self.running}\n"
                        f"vllm:num_requests_waiting{{model_name=\"{self.model}\"}} 0\n")
                return await _reply(send, 200, text.encode(), b"text/plain; version=0.0.4")
            if method == "POST" and path in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
                body = await _body(receive)
                if path == "/tokenize":
                    text = str(body.get("prompt") or body.get("messages") or "")
                    tokens = list(range(max(1, len(text) // 4)))
                    return await _json(send, 200, {"count": len(tokens), "tokens": tokens, "max_model_len": MAX_MODEL_LEN})
                return await self._generate(send, body, chat=path == "/v1/chat/completions")
            await _error(send, 404, "NotFoundError", f"no route {method} {path}")
        except BadRequest as e:
            await _error(send, 400, "BadRequestError", str(e))

    async def _generate(self, send: Send, body: dict[str, Any], chat: bool) -> None:
        if chat and not isinstance(body.get("messages"), list):
            raise BadRequest("messages: a list of messages is required")
        if not chat and not isinstance(body.get("prompt"), str | list):
            raise BadRequest("prompt: required")
        n = next((body[k] for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None), MAX_TOKENS_DEFAULT)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < MAX_MODEL_LEN:
            raise BadRequest(f"max_tokens must be an integer from 1 to {MAX_MODEL_LEN - 1}")
        start = time.perf_counter()
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        prompt_tokens = max(1, len(json.dumps(body.get("messages") or body.get("prompt"))) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        self.running += 1
        try:
            if not body.get("stream"):
                await asyncio.sleep(self.ttft_s + self.itl_s * (n - 1))
                text = "".join(_token(i) for i in range(n))
                choice = {"index": 0, "finish_reason": "length", **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
                return await _json(send, 200, {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                                               "model": self.model, "choices": [choice], "usage": usage})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
            # One chunk's bytes around its text: formatted once per stream.
            obj = "chat.completion.chunk" if chat else "text_completion"
            envelope = f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":"{self.model}",'.encode()
            head = envelope + b'"choices":[{"index":0,'
            role = '"role":"assistant",'
            for i in range(n):
                await asyncio.sleep(max(0.0, start + self.ttft_s + i * self.itl_s - time.perf_counter()))
                piece = f'"delta":{{{role if i == 0 else ""}"content":"{_token(i)}"}}' if chat else f'"text":"{_token(i)}"'
                await send({"type": "http.response.body", "body": head + piece.encode() + b',"finish_reason":null}]}\n\n', "more_body": True})
            tail = head + (b'"delta":{},' if chat else b'"text":"",') + b'"finish_reason":"length"}]}\n\n'
            if (body.get("stream_options") or {}).get("include_usage"):
                tail += envelope + b'"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
            await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
        finally:
            self.running -= 1
            self.served += 1


def _token(i: int) -> str:
    return f" t{i}"


async def _body(receive: Receive) -> dict[str, Any]:
    chunks, size = [], 0
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            raise BadRequest("body too large")
        if not msg.get("more_body"):
            break
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def _reply(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _reply(send, status, json.dumps(payload).encode(), b"application/json")


async def _error(send: Send, status: int, kind: str, message: str) -> None:
    await _json(send, status, {"error": {"message": message, "type": kind, "param": None, "code": status}})


def main() -> None:
    ap = argparse.ArgumentParser(prog="engine_standin", description="ENGINE STAND-IN (not a model): streams made-up tokens at a fixed rate")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model-name", default="engine-standin")
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    args = ap.parse_args()
    app = EngineStandIn(args.model_name, args.ttft_ms / 1000, args.itl_ms / 1000)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()

"""OpenAI-compatible API: models, chat completions, completions, embeddings.

Every completion is a job on the durable lane (workflow on the ``llm`` queue, with priority);
its tokens come back through the job's event stream and are re-shaped into OpenAI's format.
The job id is in the ``X-Switchyard-Job-Id`` header. A client that goes away cancels the job,
which cancels the engine request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from switchyard.api.deps import Res, Resources
from switchyard.api.errors import ApiError, error_body
from switchyard.api.jobs_service import accept_job, admit, cancel_abandoned, find_llm_model, header_priority, key_priority
from switchyard.api.openai_protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from switchyard.common.contracts import JobStatus, LlmInput
from switchyard.common.db.models import Job
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.factory import ADAPTERS, engine_for
from switchyard.common.model_registry import ModelEntry
from switchyard.common.priority import priority_key

router = APIRouter(prefix="/v1", tags=["openai"])
JOB_HEADER = "X-Switchyard-Job-Id"
# Errors of a failed job → the HTTP status a client gets.
_STATUS_OF_ERROR = {"ContextLengthExceeded": 400, "EngineRejected": 400, "InvalidInput": 400, "Unsupported": 400, "UnknownModel": 404, "EngineUnavailable": 503, "EngineBusy": 503}
# Chat template overhead per message and per request, in tokens (generous upper bounds).
_TEMPLATE_TOKENS_PER_MESSAGE, _TEMPLATE_TOKENS = 8, 16


# ------------------------------------------------------------------ models


def _model_cards(res: Resources) -> dict[str, dict[str, Any]]:
    """Every model of the catalog, every domain (V2 models too: their name is what jobs use)."""
    owners = {m.name: m.owned_by for m in res.registry.models} | {m.name: "switchyard" for m in res.v2.config.models}
    return {name: {"id": name, "object": "model", "created": res.started_at, "owned_by": owner} for name, owner in owners.items()}


@router.get("/models")
async def list_models(res: Res) -> dict[str, Any]:
    return {"object": "list", "data": list(_model_cards(res).values())}


@router.get("/models/{model_id:path}")
async def get_model(res: Res, model_id: str) -> dict[str, Any]:
    card = _model_cards(res).get(model_id)
    if card is None:
        raise ApiError(404, "model_not_found", f"The model {model_id!r} does not exist", param="model")
    return card


# ------------------------------------------------------------------ admission


def _llm_input(build: Callable[[], LlmInput], entry: ModelEntry, max_tokens: int | None) -> LlmInput:
    """The job input of an OpenAI request; limits OpenAI leaves open are checked here, as 400s."""
    if max_tokens is not None and max_tokens >= entry.context_length:
        raise ApiError(400, "context_length_exceeded", f"max_tokens ({max_tokens}) must be below the model's context length ({entry.context_length})", param="max_tokens")
    try:
        return build()
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, "invalid_value", f"{param}: {err['msg']}", param=param) from None


async def _check_context(res: Resources, entry: ModelEntry, inp: LlmInput) -> None:
    """Refuse what the engine would choke on: max_tokens or prompt beyond the model's context."""
    ctx = entry.context_length
    if inp.max_tokens >= ctx:
        raise ApiError(400, "context_length_exceeded", f"max_tokens ({inp.max_tokens}) must be below the model's context length ({ctx})", param="max_tokens")
    text = inp.prompt_text()
    overhead = _TEMPLATE_TOKENS + _TEMPLATE_TOKENS_PER_MESSAGE * len(inp.messages or [])
    # Byte-level BPE: a token is at least one byte, so the byte count bounds the token count.
    if len(text.encode()) + overhead + inp.max_tokens <= ctx:
        return
    try:
        tokens = await engine_for(entry.endpoints[0], res.http).count_tokens(text)
    except (EngineError, httpx.HTTPError) as e:
        raise ApiError(503, "engine_unavailable", f"could not measure the prompt: {e}", headers={"Retry-After": "1"}) from e
    if tokens + overhead + inp.max_tokens > ctx:
        raise ApiError(400, "context_length_exceeded",
                       f"This model's maximum context length is {ctx} tokens; the prompt has about {tokens + overhead} and max_tokens is {inp.max_tokens}",
                       param="messages" if inp.messages else "prompt")


def _check_capabilities(entry: ModelEntry, inp: LlmInput) -> None:
    """A feature is accepted only if every endpoint the request may land on honours it."""
    if inp.logprobs:
        lacking = sorted({ep.engine for ep in entry.endpoints if "logprobs" not in ADAPTERS[ep.engine].capabilities})
        if lacking:
            raise ApiError(400, "unsupported_parameter", f"logprobs are not available for {entry.name} (engine: {', '.join(lacking)})", param="logprobs")


async def _start(res: Resources, entry: ModelEntry, inp: LlmInput, x_priority: str | None, authorization: str | None, user: str | None) -> Job:
    _check_capabilities(entry, inp)
    await _check_context(res, entry, inp)
    await admit(res, entry.name)
    given = header_priority(x_priority)
    prio = priority_key(given if given is not None else key_priority(res, authorization))
    row, _ = await accept_job(res, domain="llm", model=entry.name, input=inp.model_dump(mode="json"), priority=prio,
                              metadata={"api": "openai", **({"user": user} if user else {})})
    return row


# ------------------------------------------------------------------ events → OpenAI shapes


@dataclass
class Collected:
    """A finished completion assembled from its events."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    logprobs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    status: str | None = None


async def _events(res: Resources, job: Job) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(type, data) of the job's events until it ends; a ``reset`` is resolved by the callers."""
    async for event in res.bus.follow(str(job.id), block_ms=5000):
        if event is not None:
            yield event.type, event.data


def _job_error(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    err = data.get("error") or {"type": "Cancelled", "message": "the request was cancelled"}
    status = _STATUS_OF_ERROR.get(err.get("type", ""), 500)
    if data.get("status") == JobStatus.cancelled.value:
        status = 499
    return status, error_body(status, err.get("type", "error"), err.get("message", "generation failed"))


async def _collect(res: Resources, job: Job) -> Collected:
    out = Collected()
    async for kind, data in _events(res, job):
        if kind == "reset":
            out.texts.clear()
            out.logprobs.clear()
        elif kind == "token":
            c = int(data.get("choice", 0))
            out.texts.setdefault(c, []).append(data["text"])
            out.logprobs.setdefault(c, []).extend(data.get("logprobs") or [])
        elif kind == "result":
            out.result, out.usage = data["result"], data.get("usage")
        elif kind == "status" and data["status"] in (JobStatus.failed.value, JobStatus.cancelled.value):
            out.status, out.error = data["status"], data
    return out


def _completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e.get("token", ""))
    return {"tokens": [e.get("token") for e in entries], "token_logprobs": [e.get("logprob") for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in entries], "text_offset": offsets}


def _choice_logprobs(kind: str, entries: list[dict[str, Any]] | None, wanted: bool) -> dict[str, Any] | None:
    if not wanted:
        return None
    return {"content": entries or []} if kind == "chat" else _completion_logprobs(entries or [])


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass
class Reply:
    """What an OpenAI answer needs to know about its job."""

    res: Resources
    job: Job
    kind: Literal["chat", "text"]
    n: int
    logprobs: bool
    include_usage: bool

    @property
    def object_id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + str(self.job.id)

    @property
    def headers(self) -> dict[str, str]:
        return {JOB_HEADER: str(self.job.id)}

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.object_id, "object": obj, "created": int(self.job.created_at.timestamp()), "model": self.job.model,
                "system_fingerprint": None, "choices": choices}

    def cancel_in_background(self) -> None:
        self.res.dispatcher.background(cancel_abandoned(self.res, self.job))


async def _respond_json(reply: Reply, request: Request) -> JSONResponse:
    """Wait for the whole completion; a client that leaves first cancels the job."""
    collector = asyncio.create_task(_collect(reply.res, reply.job))
    gone = asyncio.create_task(_until_disconnect(request))
    await asyncio.wait({collector, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not collector.done():
        collector.cancel()
        reply.cancel_in_background()
        return JSONResponse(error_body(499, "client_closed_request", "client went away"), status_code=499, headers=reply.headers)
    gone.cancel()
    out = collector.result()
    if out.error is not None:
        status, err = _job_error(out.error)
        return JSONResponse(err, status_code=status, headers=reply.headers)
    assert out.result is not None
    finish = {c["index"]: c["finish_reason"] for c in out.result.get("choices", [])}
    choices = []
    for c in range(reply.n):
        text = "".join(out.texts.get(c, []))
        choice: dict[str, Any] = {"index": c, "finish_reason": finish.get(c) or "stop", "logprobs": _choice_logprobs(reply.kind, out.logprobs.get(c), reply.logprobs)}
        if reply.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choices.append(choice)
    payload = reply.envelope("chat.completion" if reply.kind == "chat" else "text_completion", choices)
    payload["usage"] = out.usage
    return JSONResponse(payload, headers=reply.headers)


def _respond_stream(reply: Reply) -> StreamingResponse:
    """OpenAI's server-sent chunks, ending with ``[DONE]``; a client that leaves cancels the job."""
    kind = reply.kind
    chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        payload = reply.envelope(chunk_obj, choices)
        if reply.include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def piece(c: int, text: str, lp: list[dict[str, Any]] | None, finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"index": c, "finish_reason": finish, "logprobs": _choice_logprobs(kind, lp, reply.logprobs) if finish is None else None}
        if kind == "chat":
            out["delta"] = {"content": text} if finish is None else {}
        else:
            out["text"] = text
        return out

    async def stream() -> AsyncIterator[str]:
        finished = False
        sent: dict[int, int] = {}  # tokens sent per choice: after a reset, resent tokens are skipped
        replayed: dict[int, int] = {}
        try:
            if kind == "chat":
                yield chunk([{"index": c, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for c in range(reply.n)])
            async for etype, data in _events(reply.res, reply.job):
                if etype == "reset":
                    replayed = {}
                elif etype == "token":
                    c = int(data.get("choice", 0))
                    replayed[c] = replayed.get(c, 0) + 1
                    if replayed[c] <= sent.get(c, 0):
                        continue  # the client has this position already (best effort after a divergent retry)
                    sent[c] = replayed[c]
                    yield chunk([piece(c, data["text"], data.get("logprobs"))])
                elif etype == "result":
                    finish = {ch["index"]: ch["finish_reason"] for ch in data["result"].get("choices", [])}
                    for c in range(reply.n):
                        yield chunk([piece(c, "", None, finish.get(c) or "stop")])
                    if reply.include_usage:
                        yield chunk([], data.get("usage"))
                elif etype == "status" and data["status"] in (JobStatus.failed.value, JobStatus.cancelled.value):
                    yield f"data: {json.dumps(_job_error(data)[1])}\n\n"
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away mid-stream
                reply.cancel_in_background()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={**reply.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _respond(reply: Reply, request: Request, stream: bool) -> Any:
    return _respond_stream(reply) if stream else await _respond_json(reply, request)


# ------------------------------------------------------------------ routes


@router.post("/chat/completions")
async def chat_completions(
    res: Res, request: Request, body: ChatCompletionRequest,
    x_priority: Annotated[str | None, Header()] = None, authorization: Annotated[str | None, Header()] = None,
) -> Any:
    entry = find_llm_model(res, body.model, "chat")
    inp = _llm_input(lambda: body.llm_input(default_max_tokens=min(512, entry.context_length // 2)), entry, body.max_completion_tokens or body.max_tokens)
    job = await _start(res, entry, inp, x_priority, authorization, body.user)
    return await _respond(Reply(res, job, "chat", body.n, body.logprobs, body.include_usage), request, body.stream)


@router.post("/completions")
async def completions(
    res: Res, request: Request, body: CompletionRequest,
    x_priority: Annotated[str | None, Header()] = None, authorization: Annotated[str | None, Header()] = None,
) -> Any:
    entry = find_llm_model(res, body.model, "chat")
    job = await _start(res, entry, _llm_input(body.llm_input, entry, body.max_tokens), x_priority, authorization, body.user)
    return await _respond(Reply(res, job, "text", body.n, body.logprobs is not None, body.include_usage), request, body.stream)


@router.post("/embeddings")
async def embeddings(res: Res, body: EmbeddingRequest) -> dict[str, Any]:
    """Embeddings are a short synchronous call (realtime lane): no job, no workflow."""
    entry = find_llm_model(res, body.model, "embedding")
    last: Exception | None = None
    for endpoint in entry.endpoints:
        try:
            vectors, tokens = await engine_for(endpoint, res.http).embed(body.texts())
            break
        except EngineError as e:
            if not e.retryable:
                raise ApiError(400, "invalid_input", e.message, param="input") from e
            last = e
        except httpx.HTTPError as e:
            last = e
    else:
        raise ApiError(503, "engine_unavailable", f"no endpoint of {entry.name} answered: {last}", headers={"Retry-After": "1"})

    def encode(v: list[float]) -> list[float] | str:
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if body.encoding_format == "base64" else v

    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": entry.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

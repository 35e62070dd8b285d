"""A completion job's events, re-shaped into OpenAI's answers: one JSON body once the job ended, or
server-sent chunks as tokens arrive. A client that goes away cancels the job.

Events come from the job API's reader (``jobs.event_streaming.job_events``); ``reset`` events (a
retried attempt diverged) are resolved by ``TokenLedger``, the rule the worker resumes by too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from switchyard.api import request_log
from switchyard.api.deps import Resources
from switchyard.api.errors import error_body
from switchyard.api.jobs.event_streaming import job_events
from switchyard.api.jobs.service import cancel_abandoned
from switchyard.api.openai.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessage,
    ChatRoleChoice,
    ChoiceLogprobs,
    Completion,
    CompletionChunk,
    TextChoice,
)
from switchyard.common.contracts import JobEvent, JobStatus, Usage
from switchyard.common.db.models import Job
from switchyard.common.events import TokenLedger
from switchyard.common.quotas import Lease
from switchyard.common.request_log import RequestRecord
from switchyard.common.shadow.canary import SERVED_BY

JOB_HEADER = "X-Switchyard-Job-Id"
# Errors of a failed job → the HTTP status a client gets.
STATUS_OF_ERROR = {"ContextLengthExceeded": 400, "EngineRejected": 400, "InvalidInput": 400, "Unsupported": 400, "UnknownModel": 404, "EngineUnavailable": 503, "EngineBusy": 503}


def is_end(event: JobEvent) -> bool:
    """A failed or cancelled job (a succeeded one ends with its ``result`` and status)."""
    return event.type == "status" and event.data["status"] in (JobStatus.failed.value, JobStatus.cancelled.value)


def job_error(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and error body of a job that failed or was cancelled."""
    err = data.get("error") or {"type": "Cancelled", "message": "the request was cancelled"}
    status = STATUS_OF_ERROR.get(err.get("type", ""), 500)
    if data.get("status") == JobStatus.cancelled.value:
        status = 499
    return status, error_body(status, err.get("type", "error"), err.get("message", "generation failed"))


def completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The completions API's logprobs: parallel lists, with each token's character offset."""
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e.get("token", ""))
    return {"tokens": [e.get("token") for e in entries], "token_logprobs": [e.get("logprob") for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in entries], "text_offset": offsets}


@dataclass
class Reply:
    """What an OpenAI answer needs to know about its job."""

    res: Resources
    job: Job
    kind: Literal["chat", "text"]
    n: int
    logprobs: bool
    include_usage: bool
    # A streamed reply's slot among the key's concurrent streams (switchyard.api.limits.open_stream).
    lease: Lease | None = None
    # The request's record (switchyard.api.request_log): what the client was sent, and the job's times.
    record: RequestRecord = field(default_factory=request_log.current)

    @property
    def object_id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + str(self.job.id)

    @property
    def created(self) -> int:
        return int(self.job.created_at.timestamp())

    @property
    def headers(self) -> dict[str, str]:
        canary = (self.job.model_spec or {}).get("canary")  # a canary's share: the candidate answered (docs/shadow.md)
        return {JOB_HEADER: str(self.job.id), **({SERVED_BY: canary["candidate"]} if canary else {})}

    def choice_logprobs(self, entries: list[dict[str, Any]]) -> ChoiceLogprobs:
        if not self.logprobs:
            return None
        return {"content": entries} if self.kind == "chat" else completion_logprobs(entries)

    def cancel_in_background(self) -> None:
        self.res.dispatcher.background(cancel_abandoned(self.res, self.job))


@dataclass
class Collected:
    """A finished completion assembled from its events."""

    tokens: TokenLedger = field(default_factory=TokenLedger)
    result: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The result event whole: usage, and the job's timings, attempts and endpoint (bookkeeping).
    ended: dict[str, Any] = field(default_factory=dict)


async def collect(reply: Reply) -> Collected:
    out = Collected()
    async for event in job_events(reply.res, reply.job):
        if event is None:
            continue
        out.tokens.apply(event)
        if event.type == "result":
            out.result, out.usage, out.ended = event.data["result"], event.data.get("usage"), event.data
        elif is_end(event):
            out.error = event.data
    return out


def account(rec: RequestRecord, ended: dict[str, Any]) -> None:
    """A completion's numbers on its record, from its job's result event: tokens (the engine's
    count), queue and engine time, attempts, endpoint. The API measures TTFT itself."""
    usage = ended.get("usage") or {}
    timings = ended.get("timings") or {}
    rec.prompt_tokens, rec.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    rec.queue_ms, rec.engine_ms = timings.get("queue_ms"), timings.get("engine_ms")
    rec.attempts, rec.endpoint = ended.get("attempts"), ended.get("endpoint")


def _ended_badly(rec: RequestRecord, data: dict[str, Any]) -> None:
    rec.outcome = str(data.get("status") or "failed")


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _finish_reasons(result: dict[str, Any]) -> dict[int, str | None]:
    return {c["index"]: c["finish_reason"] for c in result.get("choices", [])}


def _whole(reply: Reply, out: Collected) -> ChatCompletion | Completion:
    assert out.result is not None
    finish = _finish_reasons(out.result)
    texts = out.tokens.texts()
    usage = Usage.model_validate(out.usage) if out.usage is not None else None
    if reply.kind == "chat":
        chat = [ChatChoice(index=c, finish_reason=finish.get(c) or "stop", logprobs=reply.choice_logprobs(out.tokens.logprobs(c)),
                           message=ChatMessage(content="".join(texts.get(c, [])))) for c in range(reply.n)]
        return ChatCompletion(id=reply.object_id, created=reply.created, model=reply.job.model, choices=chat, usage=usage)
    text = [TextChoice(index=c, finish_reason=finish.get(c) or "stop", logprobs=reply.choice_logprobs(out.tokens.logprobs(c)),
                       text="".join(texts.get(c, []))) for c in range(reply.n)]
    return Completion(id=reply.object_id, created=reply.created, model=reply.job.model, choices=text, usage=usage)


async def respond_json(reply: Reply, request: Request) -> JSONResponse:
    """Wait for the whole completion; a client that leaves first cancels the job."""
    collector = asyncio.create_task(collect(reply))
    gone = asyncio.create_task(_until_disconnect(request))
    await asyncio.wait({collector, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not collector.done():
        collector.cancel()
        reply.cancel_in_background()
        reply.record.outcome, reply.record.completion_tokens = "client_closed", 0  # sent nothing
        return JSONResponse(error_body(499, "client_closed_request", "client went away"), status_code=499, headers=reply.headers)
    gone.cancel()
    out = collector.result()
    if out.error is not None:
        _ended_badly(reply.record, out.error)
        status, err = job_error(out.error)
        return JSONResponse(err, status_code=status, headers=reply.headers)
    account(reply.record, out.ended)
    reply.record.outcome = "succeeded"
    return JSONResponse(_whole(reply, out).model_dump(mode="json"), headers=reply.headers)


class _Chunks:
    """The stream's chunks of one reply, as ``data:`` lines."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def line(self, choices: list[Any], usage: Usage | None = None) -> str:
        r = self.reply
        kind = ChatCompletionChunk if r.kind == "chat" else CompletionChunk
        chunk = kind(id=r.object_id, created=r.created, model=r.job.model, choices=choices, usage=usage)
        payload = chunk.model_dump(mode="json", exclude=None if self.reply.include_usage else {"usage"})
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def roles(self) -> str:
        return self.line([ChatRoleChoice(index=c, delta=ChatDelta(role="assistant", content="")) for c in range(self.reply.n)])

    def token(self, c: int, text: str, logprobs: list[dict[str, Any]] | None) -> str:
        lp = self.reply.choice_logprobs(logprobs or [])
        if self.reply.kind == "chat":
            return self.line([ChatChunkChoice(index=c, finish_reason=None, logprobs=lp, delta=ChatDelta(content=text))])
        return self.line([TextChoice(index=c, finish_reason=None, logprobs=lp, text=text)])

    def finish(self, c: int, reason: str) -> str:
        if self.reply.kind == "chat":
            return self.line([ChatChunkChoice(index=c, finish_reason=reason, logprobs=None, delta=ChatDelta())])
        return self.line([TextChoice(index=c, finish_reason=reason, logprobs=None, text="")])


def respond_stream(reply: Reply) -> StreamingResponse:
    """OpenAI's server-sent chunks, ending with ``[DONE]``; a client that leaves cancels the job."""
    chunks = _Chunks(reply)
    rec = reply.record

    async def stream() -> AsyncIterator[str]:
        finished = False
        tokens = TokenLedger()  # after a reset, tokens the client already has are not sent again
        rec.completion_tokens = 0  # tokens relayed: what a client that leaves early was sent
        try:
            if reply.kind == "chat":
                yield chunks.roles()
            async for event in job_events(reply.res, reply.job):
                if reply.lease is not None:
                    await reply.lease.renew()
                if event is None:
                    continue
                if tokens.apply(event):
                    if rec.ttft_ms is None:
                        rec.ttft_ms = rec.elapsed_ms()  # arrival to the first token written
                    yield chunks.token(int(event.data.get("choice", 0)), event.data["text"], event.data.get("logprobs"))
                    rec.completion_tokens += 1
                elif event.type == "result":
                    sent = rec.completion_tokens
                    account(rec, event.data)
                    rec.completion_tokens = rec.completion_tokens if rec.completion_tokens is not None else sent
                    finish = _finish_reasons(event.data["result"])
                    for c in range(reply.n):
                        yield chunks.finish(c, finish.get(c) or "stop")
                    if reply.include_usage:
                        usage = event.data.get("usage")
                        yield chunks.line([], Usage.model_validate(usage) if usage is not None else None)
                elif is_end(event):
                    _ended_badly(rec, event.data)
                    yield f"data: {json.dumps(job_error(event.data)[1])}\n\n"
            finished = True
            rec.outcome = rec.outcome or "succeeded"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away mid-stream
                rec.outcome = "client_closed"
                reply.cancel_in_background()
            if reply.lease is not None:
                reply.res.dispatcher.background(reply.lease.release())

    return StreamingResponse(stream(), media_type="text/event-stream", headers={**reply.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def respond(reply: Reply, request: Request, stream: bool) -> StreamingResponse | JSONResponse:
    return respond_stream(reply) if stream else await respond_json(reply, request)

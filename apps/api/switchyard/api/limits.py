"""The API's side of the per-key quotas (switchyard.common.quotas): a job's admission (tokens per
minute reserved, a place in the model's backlog) and stream slots, as the job/OpenAI API's errors.

Requests per second are counted where the key is identified (switchyard.api.auth).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from switchyard.api.auth import LIMITER_DOWN, Refused, refusal
from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.api.jobs.service import admit
from switchyard.common.contracts import LlmInput
from switchyard.common.keys import Principal
from switchyard.common.quotas import Lease, QuotaExceeded

# Chat template overhead per message and per request, in tokens (as the OpenAI admission's context check).
TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS = 8, 16


def quota_error(e: QuotaExceeded | RedisError) -> ApiError:
    """429, or 503 when the counters are unreachable (never unlimited): as for the request rate."""
    return refusal(Refused(503, LIMITER_DOWN) if isinstance(e, RedisError) else Refused(429, e.message, e.headers))


def text_tokens(text: str) -> int:
    """A text's tokens, estimated without a tokenizer (~4 bytes a token for English BPE): admission
    must not wait for the engine; the job's end settles with the real count."""
    return math.ceil(len(text.encode()) / 4)


def prompt_tokens(text: str, messages: int = 0) -> int:
    """A prompt's tokens (estimate), with the chat template's."""
    return text_tokens(text) + TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * messages


def llm_cost(inp: LlmInput) -> int:
    """What a generation may use: the prompt's estimate and ``max_tokens`` for each choice."""
    return prompt_tokens(inp.prompt_text(), len(inp.messages or [])) + inp.max_tokens * inp.n


@dataclass
class Admission:
    """A job admitted but not yet accepted: its id, its backlog place and token reservation."""

    res: Resources
    model: str
    job_id: uuid.UUID
    reserved: bool

    async def undo(self) -> None:
        """Give the place and the tokens back (the job was not accepted, or was an idempotent replay)."""
        await self.res.backlog.release(self.model, str(self.job_id))
        if self.reserved:
            await self.res.quotas.settle(str(self.job_id), 0)


async def admit_job(res: Resources, caller: Principal, conn: HTTPConnection, model: str, tokens: int | None) -> Admission:
    """Reserve ``tokens`` (LLM work; None: none) of the caller's tokens per minute for a new job, then
    a place in the model's backlog; 429 when either is full. The job's end settles the reservation
    with what it used (bookkeeping's ``job.finish``)."""
    job_id = uuid.uuid4()
    reserved = False
    if tokens is not None:
        try:
            bucket = await res.quotas.tokens(caller.key_id, caller.limits, tokens, str(job_id))
        except (QuotaExceeded, RedisError) as e:
            raise quota_error(e) from None
        if bucket is not None:
            reserved = True
            conn.state.rate_tokens = bucket  # the x-ratelimit-*-tokens headers (auth.KeyFirst)
    admission = Admission(res, model, job_id, reserved)
    try:
        await admit(res, model, job_id)
    except BaseException:
        await admission.undo()
        raise
    return admission


async def charge_tokens(res: Resources, caller: Principal, conn: HTTPConnection, tokens: int) -> None:
    """Take ``tokens`` of the caller's tokens per minute for synchronous work (embeddings); 429 when over."""
    try:
        bucket = await res.quotas.tokens(caller.key_id, caller.limits, tokens)
    except (QuotaExceeded, RedisError) as e:
        raise quota_error(e) from None
    if bucket is not None:
        conn.state.rate_tokens = bucket


async def open_stream(res: Resources, caller: Principal) -> Lease | None:
    """A slot among the caller's concurrent streams (SSE, WebSocket, streamed completions); 429 when
    all are taken. Renew it while streaming, release it at the end."""
    try:
        return await res.quotas.open_stream(caller.key_id, caller.limits)
    except (QuotaExceeded, RedisError) as e:
        raise quota_error(e) from None

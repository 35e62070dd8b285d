"""Admission of an OpenAI completion: its model, its job input, the checks an engine would fail
on (context length, capabilities), the model's backlog and the job's priority; then the job."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import httpx
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from switchyard.api import request_log
from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.api.jobs.service import accept_job, find_model, header_priority
from switchyard.api.limits import admit_job, llm_cost
from switchyard.api.privacy import screen_llm_input, stored_metadata
from switchyard.common.contracts import LlmInput
from switchyard.common.db.models import Job
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.factory import ADAPTERS, engine_for
from switchyard.common.keys import Principal
from switchyard.common.model_registry import ModelEntry
from switchyard.common.priority import capped_priority
from switchyard.common.shadow.canary import canary_snapshot

# Chat template overhead per message and per request, in tokens (generous upper bounds).
TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS = 8, 16


def find_llm_model(res: Resources, name: str, kind: str) -> ModelEntry:
    """The catalog's LLM model of this kind (chat, embedding), or 404."""
    m = find_model(res, name, "llm", kind)
    assert isinstance(m, ModelEntry)  # the catalog declares every llm model as a ModelEntry
    return m


def llm_input(build: Callable[[], LlmInput], entry: ModelEntry, max_tokens: int | None) -> LlmInput:
    """The job input of an OpenAI request; limits OpenAI leaves open are checked here, as 400s."""
    if max_tokens is not None and max_tokens >= entry.context_length:
        raise ApiError(400, "context_length_exceeded", f"max_tokens ({max_tokens}) must be below the model's context length ({entry.context_length})", param="max_tokens")
    try:
        return build()
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, "invalid_value", f"{param}: {err['msg']}", param=param) from None


async def check_context(res: Resources, entry: ModelEntry, inp: LlmInput) -> None:
    """Refuse what the engine would choke on: max_tokens or prompt beyond the model's context."""
    ctx = entry.context_length
    if inp.max_tokens >= ctx:
        raise ApiError(400, "context_length_exceeded", f"max_tokens ({inp.max_tokens}) must be below the model's context length ({ctx})", param="max_tokens")
    text = inp.prompt_text()
    overhead = TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE * len(inp.messages or [])
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


def check_capabilities(entry: ModelEntry, inp: LlmInput) -> None:
    """A feature is accepted only if every endpoint the request may land on honours it."""
    if inp.logprobs:
        lacking = sorted({ep.engine for ep in entry.endpoints if "logprobs" not in ADAPTERS[ep.engine].capabilities})
        if lacking:
            raise ApiError(400, "unsupported_parameter", f"logprobs are not available for {entry.name} (engine: {', '.join(lacking)})", param="logprobs")


async def start_completion(res: Resources, caller: Principal, entry: ModelEntry, inp: LlmInput, x_priority: str | None, user: str | None,
                           conn: HTTPConnection) -> Job:
    """Check, admit and accept the completion's job, the caller tenant's (``X-Priority``, capped by
    the key's tier; the tier's priority without one). Admission reserves the caller's tokens per
    minute (prompt estimate + max_tokens) and a place in the model's backlog."""
    check_capabilities(entry, inp)
    # The model's PII policy: the engine gets `screened.engine`, the row keeps `screened.stored`.
    screened = await screen_llm_input(res, entry, inp.model_dump(mode="json"), status=400, param="messages" if inp.messages else "prompt")
    inp = llm_input(lambda: LlmInput.model_validate(screened.engine), entry, None)
    await check_context(res, entry, inp)
    # "api" is the platform's own label, no one's data: only the caller's `user` is analysed (an
    # analysis costs ~2 ms of CPU however short the text).
    metadata = {"api": "openai", **await stored_metadata(res, {"user": user} if user else {})}
    prio = capped_priority(header_priority(x_priority), caller.tier)
    admission = await admit_job(res, caller, conn, entry.name, llm_cost(inp))
    # A canary's share runs on the candidate's endpoints (job.model stays the name asked for; docs/shadow.md).
    canary = canary_snapshot(res.catalog.current, entry)
    if canary is not None:
        request_log.current().params["served_by"] = canary["canary"]["candidate"]
    try:
        row, created = await accept_job(res, tenant=caller.tenant, domain="llm", model=entry.name, input=screened.engine, stored_input=screened.stored,
                                        priority=prio, metadata=metadata, job_id=admission.job_id, request_family="openai", model_spec=canary,
                                        dispatch=False)
    except BaseException:
        await admission.undo()
        raise
    if created:
        # Started here at once when the model's backlog is short (fast_start); else, or with Redis
        # away, dispatched now.
        started = False
        with contextlib.suppress(Exception):
            started = await res.fast_starts.begin(row, entry, inp)
        if not started:
            res.dispatcher.dispatch_soon(row)
    return row

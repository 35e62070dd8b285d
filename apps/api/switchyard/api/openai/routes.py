"""OpenAI-compatible API: models, chat completions, completions, embeddings (the routes only).

Every completion is a job on the durable lane (workflow on the ``llm`` queue, with priority):
``admission`` checks and accepts it (and, while the model's backlog is short, starts it here at once:
``fast_start``), ``rendering`` re-shapes the job's events into OpenAI's format. The job id is in the ``X-Switchyard-Job-Id`` header. A client that goes away cancels the
job, which cancels the engine request. Embeddings are a synchronous call (``embeddings``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from switchyard.api import request_log
from switchyard.api.auth import Caller, require
from switchyard.api.deps import Res, Resources
from switchyard.api.errors import ApiError
from switchyard.api.limits import charge_tokens, open_stream, text_tokens
from switchyard.api.openai.admission import find_llm_model, llm_input, start_completion
from switchyard.api.openai.embeddings import embed
from switchyard.api.openai.model_cards import model_cards
from switchyard.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from switchyard.api.openai.rendering import Reply, respond
from switchyard.api.openai.responses import EmbeddingList, ModelCard, ModelList
from switchyard.common.contracts import LlmInput
from switchyard.common.db.models import Job
from switchyard.common.keys import Principal
from switchyard.common.model_registry import ModelEntry
from switchyard.common.quotas import Lease
from switchyard.common.request_log import params_of

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require("openai"))])


@router.get("/models")
async def list_models(res: Res) -> ModelList:
    return ModelList(data=list(model_cards(res).values()))


@router.get("/models/{model_id:path}")
async def get_model(res: Res, model_id: str) -> ModelCard:
    card = model_cards(res).get(model_id)
    if card is None:
        raise ApiError(404, "model_not_found", f"The model {model_id!r} does not exist", param="model")
    return card


def _record_completion(body: ChatCompletionRequest | CompletionRequest) -> None:
    """The request's record: a completion (TTFT is measured), its parameters (never its text)."""
    rec = request_log.current()
    rec.completion, rec.stream, rec.params = True, body.stream, params_of(body)


async def _start(res: Resources, caller: Principal, request: Request, entry: ModelEntry, inp: LlmInput, x_priority: str | None,
                 user: str | None, stream: bool) -> tuple[Job, Lease | None]:
    """Accept the completion's job; a streamed one first takes one of the key's stream slots."""
    lease = await open_stream(res, caller) if stream else None
    try:
        return await start_completion(res, caller, entry, inp, x_priority, user, request), lease
    except BaseException:
        if lease is not None:
            await lease.release()
        raise


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    res: Res, caller: Caller, request: Request, body: ChatCompletionRequest, x_priority: Annotated[str | None, Header()] = None,
) -> StreamingResponse | JSONResponse:
    entry = find_llm_model(res, body.model, "chat")
    _record_completion(body)
    inp = llm_input(lambda: body.llm_input(default_max_tokens=min(512, entry.context_length // 2)), entry, body.max_completion_tokens or body.max_tokens)
    job, lease = await _start(res, caller, request, entry, inp, x_priority, body.user, body.stream)
    return await respond(Reply(res, job, "chat", body.n, body.logprobs, body.include_usage, lease), request, body.stream)


@router.post("/completions", response_model=None)
async def completions(
    res: Res, caller: Caller, request: Request, body: CompletionRequest, x_priority: Annotated[str | None, Header()] = None,
) -> StreamingResponse | JSONResponse:
    entry = find_llm_model(res, body.model, "chat")
    _record_completion(body)
    inp = llm_input(body.llm_input, entry, body.max_tokens)
    job, lease = await _start(res, caller, request, entry, inp, x_priority, body.user, body.stream)
    return await respond(Reply(res, job, "text", body.n, body.logprobs is not None, body.include_usage, lease), request, body.stream)


@router.post("/embeddings")
async def embeddings(res: Res, caller: Caller, request: Request, body: EmbeddingRequest) -> EmbeddingList:
    # Synchronous: the input's estimate is taken from the caller's tokens per minute, nothing to settle.
    await charge_tokens(res, caller, request, sum(text_tokens(t) for t in body.texts()))
    request_log.current().params = params_of(body)
    return await embed(res, body)

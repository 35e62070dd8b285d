"""``/v1/embeddings``: a short synchronous call (realtime lane), no job, no workflow; the model's
endpoints are tried in order (switchyard.common.engines.fallback), each behind its circuit breaker:
an open one is skipped, and with every one open the call fails fast (503 + Retry-After)."""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import struct
import time

from switchyard.api import request_log
from switchyard.api.deps import Resources
from switchyard.api.errors import ApiError
from switchyard.api.openai.admission import find_llm_model
from switchyard.api.openai.protocol import EmbeddingRequest
from switchyard.api.openai.responses import Embedding, EmbeddingList, EmbeddingUsage
from switchyard.api.privacy import screen_embedding_input
from switchyard.common import metrics
from switchyard.common.breaker import BreakerBoard
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.factory import engine_for
from switchyard.common.engines.fallback import Attempt, NoEndpointAnswered, first_endpoint_that_works
from switchyard.common.metrics import endpoint_label


@functools.cache
def engine_breakers(fail_max: int, reset_s: float) -> BreakerBoard:
    """This process's breakers in front of engine endpoints (the realtime lane's settings)."""
    return BreakerBoard(fail_max=fail_max, reset_timeout_s=reset_s, exclude=[asyncio.CancelledError])


async def embed(res: Resources, body: EmbeddingRequest) -> EmbeddingList:
    entry = find_llm_model(res, body.model, "embedding")
    texts = await screen_embedding_input(res, entry, body.texts())  # the model's PII policy

    async def on(attempt: Attempt) -> tuple[list[list[float]], int]:
        return await engine_for(attempt.endpoint, res.http).embed(texts)

    started = time.perf_counter()
    try:
        (vectors, tokens), endpoint = await first_endpoint_that_works(
            entry.name, entry.endpoints, on, breakers=engine_breakers(res.settings.breaker_fail_max, res.settings.breaker_reset_s))
    except EngineError as e:  # the input itself was refused: another endpoint would refuse it too
        raise ApiError(400, "invalid_input", e.message, param="input") from e
    except NoEndpointAnswered as e:
        retry_after = max(1, math.ceil(e.retry_after_s)) if e.retry_after_s is not None else 1
        raise ApiError(503, "engine_unavailable", f"no endpoint of {entry.name} answered: {e.last}", headers={"Retry-After": str(retry_after)}) from e
    rec = request_log.current()  # the request log: tokens, the endpoint that answered, the engine's time
    rec.prompt_tokens, rec.engine_ms = tokens, (time.perf_counter() - started) * 1000
    rec.endpoint = endpoint_label(endpoint.engine, entry.endpoints.index(endpoint))
    metrics.count_tokens(entry.name, tokens, 0)  # switchyard_tokens_total{kind="prompt"}

    def encode(v: list[float]) -> list[float] | str:
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if body.encoding_format == "base64" else v

    return EmbeddingList(data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)], model=entry.name,
                         usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

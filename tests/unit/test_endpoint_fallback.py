"""Endpoint fallback (LLM worker and embeddings): the next endpoint only after a failure before output."""

from __future__ import annotations

import httpx
import pytest

from switchyard.common.engines.base import EngineError
from switchyard.common.engines.fallback import Attempt, NoEndpointAnswered, first_endpoint_that_works
from switchyard.common.model_registry import Endpoint

pytestmark = pytest.mark.asyncio

EPS = [Endpoint(engine="llamacpp", url=f"http://127.0.0.1:{p}", engine_model="m") for p in (1, 2, 3)]


async def test_falls_back_until_one_works() -> None:
    tried: list[str] = []

    async def call(a: Attempt) -> str:
        tried.append(a.endpoint.url)
        if len(tried) == 1:
            raise httpx.ConnectError("refused")
        if len(tried) == 2:
            raise EngineError(503, "loading")
        return "ok"

    result, endpoint = await first_endpoint_that_works("m", EPS, call)
    assert (result, endpoint) == ("ok", EPS[2]) and len(tried) == 3


async def test_a_failure_after_output_is_not_retried_elsewhere() -> None:
    async def call(a: Attempt) -> str:
        a.produced_output = True
        raise httpx.ReadError("reset by peer")

    with pytest.raises(EngineError) as e:
        await first_endpoint_that_works("m", EPS, call)
    assert e.value.kind == "EngineUnavailable" and e.value.retryable


async def test_a_refused_request_is_not_retried_elsewhere() -> None:
    calls = 0

    async def call(a: Attempt) -> str:
        nonlocal calls
        calls += 1
        raise EngineError(400, "bad input")

    with pytest.raises(EngineError):
        await first_endpoint_that_works("m", EPS, call)
    assert calls == 1


async def test_every_endpoint_down() -> None:
    async def call(a: Attempt) -> str:
        raise httpx.ConnectError(f"refused {a.endpoint.url}")

    with pytest.raises(NoEndpointAnswered) as e:
        await first_endpoint_that_works("m", EPS, call)
    assert str(e.value.last) == "refused http://127.0.0.1:3" and e.value.error.kind == "EngineUnavailable"
    assert str(e.value).startswith("every endpoint of m failed; last: engine answered 503: unreachable")

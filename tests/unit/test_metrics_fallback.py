"""Engine-call metrics of the endpoint fallback (switchyard.common.engines.fallback): one count per
endpoint tried, labelled ``<engine>-<position>``, never the URL; generations in flight."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import REGISTRY

from switchyard.common.engines.base import EngineError
from switchyard.common.engines.fallback import Attempt, NoEndpointAnswered, first_endpoint_that_works
from switchyard.common.model_registry import Endpoint

MODEL = "metrics-fallback-test"
ENDPOINTS = [Endpoint(engine="vllm", url="http://127.0.0.1:9", engine_model="m"), Endpoint(engine="llamacpp", url="http://127.0.0.1:10", engine_model="m")]


def calls(endpoint: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("switchyard_engine_requests_total", {"model": MODEL, "endpoint": endpoint, "outcome": outcome}) or 0.0


def running(endpoint: str) -> float:
    return REGISTRY.get_sample_value("switchyard_engine_requests_running", {"model": MODEL, "endpoint": endpoint}) or 0.0


def test_a_fallback_shows_as_an_error_on_one_endpoint_and_ok_on_the_next() -> None:
    before = calls("vllm-0", "error"), calls("llamacpp-1", "ok")
    seen_running: list[float] = []

    async def call(attempt: Attempt) -> str:
        if attempt.endpoint.engine == "vllm":
            raise httpx.ConnectError("refused")
        seen_running.append(running("llamacpp-1"))
        return "done"

    result, endpoint = asyncio.run(first_endpoint_that_works(MODEL, ENDPOINTS, call, count_running=True))
    assert (result, endpoint.engine) == ("done", "llamacpp")
    assert (calls("vllm-0", "error"), calls("llamacpp-1", "ok")) == (before[0] + 1, before[1] + 1)
    assert seen_running == [1.0] and running("llamacpp-1") == 0.0  # in flight while it ran, not after
    assert not any("127.0.0.1" in s.labels.get("endpoint", "") for m in REGISTRY.collect() for s in m.samples)


def test_timeouts_are_their_own_outcome_and_every_endpoint_counts() -> None:
    before = calls("vllm-0", "timeout"), calls("llamacpp-1", "timeout")

    async def call(attempt: Attempt) -> str:
        if attempt.endpoint.engine == "vllm":
            raise httpx.ReadTimeout("slow")
        raise EngineError(504, "gateway timeout")

    with pytest.raises(NoEndpointAnswered):
        asyncio.run(first_endpoint_that_works(MODEL, ENDPOINTS, call))
    assert (calls("vllm-0", "timeout"), calls("llamacpp-1", "timeout")) == (before[0] + 1, before[1] + 1)


def test_a_cancelled_call_counts_no_outcome_and_leaves_nothing_running() -> None:
    before = sum(calls("vllm-0", o) for o in ("ok", "error", "timeout"))

    async def main() -> None:
        async def call(attempt: Attempt) -> str:
            await asyncio.sleep(10)
            return "never"

        task = asyncio.create_task(first_endpoint_that_works(MODEL, ENDPOINTS, call, count_running=True))
        await asyncio.sleep(0.01)
        assert running("vllm-0") == 1.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert running("vllm-0") == 0.0
    assert sum(calls("vllm-0", o) for o in ("ok", "error", "timeout")) == before

"""The ENGINE STAND-IN of the capacity benchmark (switchyard.devstack.engine_standin: made-up tokens
at a fixed rate, not a model), read through the platform's real vLLM adapter: the shapes the worker
parses, the fixed timing, no slot limit, and 400s for bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
import uvicorn

from switchyard.common.contracts import LlmInput
from switchyard.common.engines.vllm import VllmEngine
from switchyard.devstack.engine_standin import EngineStandIn
from switchyard.devstack.procs import free_port

pytestmark = pytest.mark.asyncio
TTFT_S, ITL_S = 0.040, 0.010


@pytest.fixture(scope="module")
def standin() -> Iterator[tuple[str, EngineStandIn]]:
    app = EngineStandIn("standin", TTFT_S, ITL_S)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


def _input(n: int) -> LlmInput:
    return LlmInput.model_validate({"messages": [{"role": "user", "content": "hello"}], "max_tokens": n})


async def _timed_stream(engine: VllmEngine, n: int) -> tuple[float, float, str, list[str | None], int]:
    t0 = time.perf_counter()
    first, text, reasons, completion = 0.0, "", [], 0
    async for chunk in engine.stream(_input(n), seed=None):
        if chunk.text and not first:
            first = time.perf_counter()
        text += chunk.text
        reasons.append(chunk.finish_reason)
        if chunk.usage:
            completion = chunk.usage.completion_tokens
    return first - t0, time.perf_counter() - t0, text, reasons, completion


async def test_streams_max_tokens_at_the_fixed_rate_through_the_vllm_adapter(standin: tuple[str, EngineStandIn], http: httpx.AsyncClient) -> None:
    url, _ = standin
    engine = VllmEngine(url, "standin", http)
    ttft, total, text, reasons, completion = await _timed_stream(engine, 12)
    assert text == "".join(f" t{i}" for i in range(12))
    assert "length" in reasons and completion == 12
    # Never faster than configured (deadlines are absolute), and not much slower on a quiet loop.
    assert TTFT_S <= ttft < TTFT_S + 0.25
    assert TTFT_S + 11 * ITL_S <= total < TTFT_S + 11 * ITL_S + 0.25
    assert await engine.health()
    assert await engine.count_tokens("one two three four") >= 1


async def test_has_no_slot_limit(standin: tuple[str, EngineStandIn], http: httpx.AsyncClient) -> None:
    """Forty streams at once each take about one stream's time: a gateway in front runs out first."""
    url, app = standin
    engine = VllmEngine(url, "standin", httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=64)))
    served = app.served
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_timed_stream(engine, 8) for _ in range(40)))
    wall = time.perf_counter() - t0
    await engine.http.aclose()
    assert app.served - served == 40
    assert all(r[2] == "".join(f" t{i}" for i in range(8)) for r in results)
    assert wall < 2 * (TTFT_S + 7 * ITL_S) + 0.5


async def test_whole_answer_and_bad_input(standin: tuple[str, EngineStandIn], http: httpx.AsyncClient) -> None:
    url, _ = standin
    r = await http.post(f"{url}/v1/chat/completions", json={"model": "standin", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == " t0 t1 t2" and body["usage"]["completion_tokens"] == 3
    for bad, what in ((b"{not json", "not valid JSON"), (b'{"model": "standin"}', "messages"),
                      (b'{"messages": [], "max_tokens": 0}', "max_tokens"), (b'{"messages": [], "max_tokens": true}', "max_tokens")):
        r = await http.post(f"{url}/v1/chat/completions", content=bad)
        assert r.status_code == 400, bad
        assert what in r.json()["error"]["message"] and r.json()["error"]["type"] == "BadRequestError"
    assert (await http.get(f"{url}/nowhere")).status_code == 404

"""Backend-agnostic inference: several models and engines at once, embeddings, fallbacks.

The SGLang endpoint is a FAKE (protocol-faithful stand-in, switchyard.devstack.fake_sglang, backed
by llama.cpp) because SGLang needs CUDA; llama.cpp engines are real.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from switchyard.common.engines.factory import engine_for
from switchyard.devstack.client import JobClient
from switchyard.devstack.stack import EMBED_MODEL, GEMMA_MODEL, LLM_MODEL, SGLANG_MODEL, VLLM_MODEL, Stack

MSG = [{"role": "user", "content": "What is a train?"}]


def _job(client: JobClient, raw: object) -> dict:  # type: ignore[type-arg]
    return client.get(raw.headers["x-switchyard-job-id"])  # type: ignore[attr-defined]


def test_two_models_on_two_engines_at_once(oai: openai.OpenAI, client: JobClient) -> None:
    def ask(model: str) -> object:
        return oai.chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=12)  # type: ignore[arg-type]

    with ThreadPoolExecutor(2) as pool:
        smol, gemma = pool.map(ask, [LLM_MODEL, GEMMA_MODEL])
    a, b = _job(client, smol), _job(client, gemma)
    assert a["status"] == b["status"] == "succeeded"
    assert a["result"]["text"] and b["result"]["text"]
    assert a["model"] == LLM_MODEL and b["model"] == GEMMA_MODEL
    assert a["result"]["endpoint"] != b["result"]["endpoint"]  # two llama.cpp servers
    assert {m.id for m in oai.models.list()} >= {LLM_MODEL, GEMMA_MODEL, EMBED_MODEL, SGLANG_MODEL}


def test_embeddings(oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(model=EMBED_MODEL, input=["a cat", "a kitten", "the stock market"], encoding_format="float")
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and len({len(v) for v in vecs}) == 1 and len(vecs[0]) > 100
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    assert r.usage.prompt_tokens > 0 and r.model == EMBED_MODEL
    # The client's default (base64) decodes to the same vectors.
    b64 = oai.embeddings.create(model=EMBED_MODEL, input="a cat")
    assert max(abs(x - y) for x, y in zip(b64.data[0].embedding, vecs[0], strict=True)) < 1e-5


def test_models_are_used_for_their_kind(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model=EMBED_MODEL, messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model=LLM_MODEL, input="x")
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3]])


def test_sglang_dialect_chat_and_native_generate(oai: openai.OpenAI, client: JobClient) -> None:
    chat = oai.chat.completions.with_raw_response.create(model=SGLANG_MODEL, messages=MSG, max_tokens=10)  # type: ignore[arg-type]
    job = _job(client, chat)
    assert job["status"] == "succeeded" and job["result"]["endpoint"].startswith("sglang:")
    assert chat.parse().choices[0].message.content == job["result"]["text"] != ""
    # Raw prompts go through SGLang's native /generate (cumulative text → deltas).
    stream = oai.completions.create(model=SGLANG_MODEL, prompt="Once upon a time", max_tokens=12, stream=True, extra_body={"ignore_eos": True},
                                    stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].usage and chunks[-1].usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError):  # logprobs are not in this adapter: refused, not ignored
        oai.completions.create(model=SGLANG_MODEL, prompt="x", max_tokens=2, logprobs=1)


def test_fallback_to_the_next_endpoint(oai: openai.OpenAI, client: JobClient) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="smollm2-with-fallback", messages=MSG, max_tokens=6)  # type: ignore[arg-type]
    job = _job(client, raw)
    assert job["status"] == "succeeded" and job["result"]["endpoint"].startswith("llamacpp:")
    assert job["attempts"] == 1  # fell back inside one attempt, no Temporal retry needed


def test_engine_native_parts(stack: Stack) -> None:
    """Health, load metrics and token counting through each adapter, against the running engines."""
    registry = stack.catalog().registry
    assert stack.cfg.vllm, "vLLM is not installed: run build-support/setup-vllm.sh (./switchyard setup does)"

    async def probe() -> None:
        async with httpx.AsyncClient() as http:
            for name in (LLM_MODEL, GEMMA_MODEL, SGLANG_MODEL, VLLM_MODEL):
                engine = engine_for(registry.get(name).endpoints[0], http)  # type: ignore[union-attr]
                assert await engine.health(), name
                metrics = await engine.metrics()
                assert metrics.running is not None and metrics.waiting is not None, (name, metrics)
                assert 2 <= await engine.count_tokens("Hello there, how are you?") <= 12

    asyncio.run(probe())

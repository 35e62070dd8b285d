"""LLM time to first token through Nginx + API + Temporal + worker vs the engine called directly,
for each real engine (llama.cpp, and vLLM when installed)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from httpx_sse import connect_sse

from switchyard.common.model_registry import Endpoint
from switchyard.devstack.client import llm_job
from switchyard.devstack.stack import LLM_MODEL, VLLM_MODEL, Stack
from switchyard_bench.stats import save, summarize, table

TOPICS = ["the sea", "a train", "mountains", "a city at night", "coffee", "a library", "winter", "robots", "a garden", "the moon"]
MAX_TOKENS = 32
Probe = Callable[[int], tuple[float, float]]  # request number → (TTFT ms, decode tokens/s)


def _prompt(i: int) -> str:
    # A fresh nonce per request: no prompt-cache hits, cold TTFT every time.
    return f"[{uuid.uuid4().hex[:12]}] Write two sentences about {TOPICS[i % len(TOPICS)]}."


def _rate(n: int, first: float, end: float) -> float:
    return (n - 1) / (end - first) if n > 1 else 0.0


def engine_direct(endpoint: Endpoint) -> Probe:
    def probe(i: int) -> tuple[float, float]:
        body = {"model": endpoint.engine_model, "messages": [{"role": "user", "content": _prompt(i)}], "max_tokens": MAX_TOKENS, "stream": True, "ignore_eos": True}
        t0 = time.perf_counter()
        first, n = 0.0, 0
        with httpx.stream("POST", f"{endpoint.url}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        first = first or time.perf_counter()
                        n += 1
        assert first, "no token"
        return (first - t0) * 1000, _rate(n, first, time.perf_counter())

    return probe


def through_lane(stack: Stack, model: str) -> Probe:
    def probe(i: int) -> tuple[float, float]:
        with httpx.Client(base_url=stack.ingress, timeout=60, headers={"Authorization": f"Bearer {stack.dev_key}"}) as c:
            t0 = time.perf_counter()
            job_id = c.post("/v1/jobs", json={**llm_job(_prompt(i), max_tokens=MAX_TOKENS, ignore_eos=True, seed=None), "model": model}).json()["id"]
            first, n = 0.0, 0
            with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as es:
                for sse in es.iter_sse():
                    if sse.event == "token":
                        first = first or time.perf_counter()
                        n += 1
        assert first, "no token"
        return (first - t0) * 1000, _rate(n, first, time.perf_counter())

    return probe


def _measure(probe: Probe, n: int, workers: int) -> tuple[list[float], list[float], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(probe, range(n)))
    return [o[0] for o in out], [o[1] for o in out], time.perf_counter() - t0


def run(stack: Stack, n: int = 60) -> None:
    registry = stack.catalog().registry
    engines = [("llama.cpp", LLM_MODEL)] + ([("vLLM", VLLM_MODEL)] if stack.cfg.vllm else [])
    rows, decode = [], {}
    for label, model in engines:
        direct, lane = engine_direct(registry.get(model).endpoints[0]), through_lane(stack, model)  # type: ignore[union-attr]
        for i in range(5):  # warm-up
            direct(i)
            lane(i)
        for workers in (1, 4):
            d_name, l_name = f"{label} direct, concurrency {workers}", f"{label} via Nginx+API+Temporal, conc. {workers}"
            acc: dict[str, tuple[list[float], list[float], list[float]]] = {d_name: ([], [], []), l_name: ([], [], [])}
            # Alternate short rounds so both sides see the same machine conditions.
            for _ in range(4):
                for name, probe in ((d_name, direct), (l_name, lane)):
                    ttfts, rates, elapsed = _measure(probe, n // 4, workers)
                    acc[name][0].extend(ttfts)
                    acc[name][1].extend(rates)
                    acc[name][2].append(elapsed)
            for name in (d_name, l_name):
                all_ttfts, all_rates, all_secs = acc[name]
                rows.append(summarize(name, all_ttfts, sum(all_secs), baseline=None if name == d_name else d_name))
                decode[name] = round(sum(all_rates) / len(all_rates), 1)
    print(f"\nLLM time to first token (SmolLM2-135M-Instruct; {MAX_TOKENS} tokens per request; cold prompts)")
    print(table(rows))
    print("decode tokens/s per stream: " + ", ".join(f"{k}: {v}" for k, v in decode.items()))
    out = save("llm_ttft", rows, {"target": "TTFT p99 < 500 ms end to end; overhead <= 60 ms p50", "decode_tokens_per_s": decode, "max_tokens": MAX_TOKENS})
    print(f"results: {out}")

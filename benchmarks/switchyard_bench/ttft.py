"""LLM time to first token through Nginx + API + Temporal + worker vs the engine called directly."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from httpx_sse import connect_sse

from switchyard.devstack.client import LLM_MODEL, llm_job
from switchyard.devstack.stack import Stack
from switchyard_bench.stats import save, summarize, table

TOPICS = ["the sea", "a train", "mountains", "a city at night", "coffee", "a library", "winter", "robots", "a garden", "the moon"]
MAX_TOKENS = 32


def _prompt(i: int) -> str:
    # A fresh nonce per request: no prompt-cache hits, cold TTFT every time.
    return f"[{uuid.uuid4().hex[:12]}] Write two sentences about {TOPICS[i % len(TOPICS)]}."


def engine_direct(stack: Stack, i: int) -> tuple[float, float]:
    body = {"model": LLM_MODEL, "messages": [{"role": "user", "content": _prompt(i)}], "max_tokens": MAX_TOKENS, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    first = None
    n = 0
    with httpx.stream("POST", f"http://127.0.0.1:{stack.cfg.engine_port}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content") if json.loads(line[6:]).get("choices") else None
                if delta:
                    first = first or time.perf_counter()
                    n += 1
    end = time.perf_counter()
    assert first is not None
    return (first - t0) * 1000, (n - 1) / (end - first) if n > 1 else 0.0


def through_lane(stack: Stack, i: int) -> tuple[float, float]:
    with httpx.Client(base_url=stack.ingress, timeout=60) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/jobs", json=llm_job(_prompt(i), max_tokens=MAX_TOKENS, ignore_eos=True, seed=None))
        job_id = r.json()["id"]
        first = None
        n = 0
        with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as es:
            for sse in es.iter_sse():
                if sse.event == "token":
                    first = first or time.perf_counter()
                    n += 1
        end = time.perf_counter()
    assert first is not None
    return (first - t0) * 1000, (n - 1) / (end - first) if n > 1 else 0.0


def _measure(fn, stack: Stack, n: int, workers: int) -> tuple[list[float], list[float], float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(lambda i: fn(stack, i), range(n)))
    return [o[0] for o in out], [o[1] for o in out], time.perf_counter() - t0


def run(stack: Stack, n: int = 60) -> None:
    for i in range(5):  # warm-up
        engine_direct(stack, i)
        through_lane(stack, i)
    rows, decode = [], {}
    for workers in (1, 4):
        d_name, l_name = f"engine direct, concurrency {workers}", f"via Nginx+API+Temporal, concurrency {workers}"
        # Alternate short rounds so both sides see the same machine conditions.
        acc: dict[str, tuple[list[float], list[float], list[float]]] = {d_name: ([], [], []), l_name: ([], [], [])}
        for _ in range(4):
            for name, fn in ((d_name, engine_direct), (l_name, through_lane)):
                ttfts, rates, elapsed = _measure(fn, stack, n // 4, workers)
                acc[name][0].extend(ttfts)
                acc[name][1].extend(rates)
                acc[name][2].append(elapsed)
        for name in (d_name, l_name):
            all_ttfts, all_rates, all_secs = acc[name]
            rows.append(summarize(name, all_ttfts, sum(all_secs), baseline=None if name == d_name else d_name))
            decode[name] = round(sum(all_rates) / len(all_rates), 1)
    print(f"\nLLM time to first token (SmolLM2-135M on llama.cpp, 1 thread, {MAX_TOKENS} tokens, cold prompts)")
    print(table(rows))
    print("decode tokens/s per stream: " + ", ".join(f"{k}: {v}" for k, v in decode.items()))
    out = save("llm_ttft", rows, {"target": "TTFT p99 < 500 ms end to end; overhead <= 60 ms p50", "decode_tokens_per_s": decode, "max_tokens": MAX_TOKENS})
    print(f"results: {out}")

"""``./switchyard bench pii``: what PII redaction costs (switchyard.common.pii).

(a) In process: one ``PiiGuard`` (as the API builds it) redacting chat inputs of 200, 1 000, 4 000
    and 16 000 characters (ordinary prose with a few PII values in it), through its thread pool as
    a request does; p50/p99 per size.
(b) Through the platform (Nginx → API → Temporal → worker → llama.cpp), paired and interleaved:
    the streamed TTFT of the same prompt with PII on two catalog names of the same llama.cpp
    server, one ``pii: redact`` (the shipped model), one ``pii: pass`` (an overlay), and llama.cpp
    called directly with the redacted prompt (the tokens the redact model's engine reads); each
    round sends all three in random order; paired differences per round, their median with a
    bootstrap 95 % CI; and the TTFT p99 with redaction on (budget: < 500 ms).

    Under ``pass`` the API still analyses the text (the stored copy is redacted whatever the
    policy), so redact − pass is not the analysis' cost: it is the engine reading placeholders
    instead of the raw values (a different token count). The analysis' cost is (a), and
    redact − direct is all the platform adds on top of the engine, redaction included.
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from switchyard.common.pii import PiiGuard, PiiSettings
from switchyard.devstack.stack import LLM_MODEL, Stack
from switchyard_bench.stats import RESULTS, cpu_model, first_token_ms, median_ci, pct

PASS_MODEL = "smollm2-pii-pass"
SIZES = (200, 1_000, 4_000, 16_000)
TTFT_BUDGET_MS = 500.0

FILLER = ("The quarterly report covers sales in three regions, the new warehouse schedule and the hiring plan for the autumn. "
          "Please keep the tone friendly and the summary short, and list open questions at the end. ")
PII_BITS = ["My name is Ada Lovelace and I live in Manchester.", "Reach me at ada.lovelace.4711@example.org or +1 415 555 0132.",
            "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00.", "The VPN gateway is 203.0.113.77."]


def overlay(state_dir: Path, engine_port: int) -> Path:
    """The pass-policy twin of the shipped SmolLM2 chat model (same llama.cpp server)."""
    path = state_dir / "catalog-pii-bench.json"
    path.write_text(json.dumps({"models": [{"name": PASS_MODEL, "domain": "llm", "kind": "chat", "context_length": 2048, "pii": "pass",
                                            "endpoints": [{"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}",
                                                           "engine_model": "smollm2-135m-instruct"}]}]}))
    return path


def text_of(size: int, i: int) -> str:
    """Prose of ``size`` characters, a PII sentence first and then one per ~300 characters."""
    parts: list[str] = [f"[{uuid.uuid4().hex[:8]}] "]
    n = 0
    while sum(map(len, parts)) < size:
        parts.append(PII_BITS[(i + n // 2) % len(PII_BITS)] + " " if n % 2 == 0 else FILLER)
        n += 1
    return "".join(parts)[:size]


def in_process(n: int = 60) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    guard = PiiGuard(PiiSettings())
    load_ms = (time.perf_counter() - t0) * 1000
    rows: list[dict[str, Any]] = []

    async def measure(size: int) -> list[float]:
        ms: list[float] = []
        for i in range(n + 3):
            inp = {"messages": [{"role": "user", "content": text_of(size, i)}], "max_tokens": 8}
            t = time.perf_counter()
            red = await guard.redact_llm_input(inp)
            if i >= 3:  # warm-up dropped
                ms.append((time.perf_counter() - t) * 1000)
            assert red.found, "the prompt has PII"
        return ms

    try:
        for size in SIZES:
            ms = asyncio.run(measure(size))
            rows.append({"name": f"redact a {size}-character chat input", "n": len(ms), "p50_ms": round(statistics.median(ms), 2),
                         "p99_ms": round(pct(ms, 99), 2), "mean_ms": round(statistics.fmean(ms), 2), "us_per_char": round(statistics.median(ms) * 1000 / size, 1)})
            print(f"| {rows[-1]['name']:<40} | {rows[-1]['n']:>4} | {rows[-1]['p50_ms']:>8.2f} | {rows[-1]['p99_ms']:>8.2f} |", flush=True)
    finally:
        guard.close()
    rows.append({"name": "guard start-up (model load + warm-up)", "n": 1, "p50_ms": round(load_ms, 1), "p99_ms": round(load_ms, 1)})
    return rows


# The TTFT prompt: short (the platform TTFT benchmarks' kind), with two PII values.
def ttft_prompt(i: int) -> str:
    return f"[{uuid.uuid4().hex[:12]}] I am Ada Lovelace; write to ada.lovelace.4711@example.org. Say something about number {i}."


def through_platform(stack: Stack, rounds: int = 80, warmup: int = 5) -> list[dict[str, Any]]:
    """Each round, in random order: the prompt on the redact model, on the pass model (both via
    Nginx), and llama.cpp called directly with the redacted prompt (the tokens the redact model's
    engine reads), so redact − direct is what the platform adds, redaction included."""
    guard = PiiGuard(PiiSettings(pii_threads=1))
    engine_url = f"http://127.0.0.1:{stack.cfg.engine_port}/v1/chat/completions"
    arms = ("redact", "pass", "direct")
    out: dict[str, list[float]] = {a: [] for a in arms}
    rng = random.Random(7)
    try:
        with httpx.Client(base_url=stack.ingress, timeout=60, headers={"Authorization": f"Bearer {stack.dev_key}"}) as http, httpx.Client(
                timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as direct:  # llama.cpp drops idle keep-alive connections
            for i in range(warmup + rounds):
                # Each arm its own nonce: no arm reuses another's prompt cache in llama.cpp.
                redacted, found = guard.redact_text(ttft_prompt(i))
                assert {"PERSON", "EMAIL_ADDRESS"} <= found, found
                calls = {
                    "redact": (http, "/v1/chat/completions", {"model": LLM_MODEL, "messages": [{"role": "user", "content": ttft_prompt(i)}]}),
                    "pass": (http, "/v1/chat/completions", {"model": PASS_MODEL, "messages": [{"role": "user", "content": ttft_prompt(i)}]}),
                    "direct": (direct, engine_url, {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": redacted}]}),
                }
                for arm in rng.sample(arms, len(arms)):
                    client, url, body = calls[arm]
                    ms = first_token_ms(client, url, {**body, "max_tokens": 8, "stream": True})
                    if i >= warmup:
                        out[arm].append(ms)
    finally:
        guard.close()

    def row(name: str, arm: str, minus: str | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name, "n": len(out[arm]), "p50_ms": round(statistics.median(out[arm]), 2), "p99_ms": round(pct(out[arm], 99), 2)}
        if minus:
            med, lo, hi = median_ci([a - b for a, b in zip(out[arm], out[minus], strict=True)])
            r.update(diff_vs=minus, diff_median_ms=round(med, 2), diff_ci95_ms=[round(lo, 2), round(hi, 2)])
        return r

    redact = row("TTFT via Nginx, pii=redact", "redact", "direct")
    redact["p99_under_budget"] = redact["p99_ms"] < TTFT_BUDGET_MS
    return [row("TTFT llama.cpp direct, redacted prompt", "direct"), redact, row("TTFT via Nginx, pii=pass (raw to engine)", "pass", "direct"),
            {**row("redact vs pass (paired)", "redact", "pass"), "p50_ms": redact["p50_ms"], "p99_ms": redact["p99_ms"]}]


def table(rows: list[dict[str, Any]]) -> str:
    head = f"| {'measurement':<44} | {'n':>4} | {'p50 ms':>8} | {'p99 ms':>8} | {'paired difference, median [95% CI] ms':>44} |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        diff = f"− {r['diff_vs']}: {r['diff_median_ms']:+.2f} [{r['diff_ci95_ms'][0]:+.2f}, {r['diff_ci95_ms'][1]:+.2f}]" if "diff_median_ms" in r else ""
        lines.append(f"| {r['name']:<44} | {r['n']:>4} | {r['p50_ms']:>8.2f} | {r['p99_ms']:>8.2f} | {diff:>44} |")
    return "\n".join(lines)


def run(stack: Stack, rows: list[dict[str, Any]]) -> None:
    """``rows``: in_process()'s, measured before the stack started (a quiet machine)."""
    rows = rows + through_platform(stack)
    meta = {"bench": "pii", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{cpu_model()}, Python {platform.python_version()}",
            "method": "(a) PiiGuard.redact_llm_input in this process before the stack starts (thread-pool hop included), prose with a PII "
                      "sentence every ~300 characters, 3 warm-up calls dropped; (b) one stack, one llama.cpp server (1 thread, 4 slots) behind two "
                      "catalog names (pii: redact, the shipped one; pii: pass, an overlay) and called directly with the redacted prompt; a short chat "
                      "prompt with a name and an email (fresh nonce each round); each round the three in random order, concurrency 1, max_tokens 8; "
                      "paired differences per round, median with bootstrap 95 % CI. Under pass the API still analyses the text (the stored copy is "
                      "redacted whatever the policy): redact − pass is the engine reading placeholders instead of raw values (fewer tokens), "
                      "redact − direct is what the platform adds, redaction included.",
            "ttft_p99_budget_ms": TTFT_BUDGET_MS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pii.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "pii.md").write_text(f"# pii\n\n{json.dumps(meta, indent=2)}\n\n{table(rows)}\n")
    print(table(rows))

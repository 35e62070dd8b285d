"""The LLM lane against a stateless gateway (issue 14): the engine called directly, LiteLLM's proxy in
front of the same engine, and Switchyard's ``/v1/chat/completions`` through Nginx, in the same run.

Each round sends the same request shape (a fresh nonce per request: no prompt-cache hits) to every
target in a shuffled order, ``concurrency`` requests at once per target; differences are paired per
round and slot (median of the paired differences, bootstrap 95 % CI): medians of separate batches
drift more than the effect. Measured per request: time to the first content token (TTFT) and the mean
gap between the following tokens (inter-token latency), streamed; and the whole answer with
``max_tokens=1``, not streamed. Switchyard serves a ``pass``-policy twin of the model (PII redaction's
cost is its own line: the shipped ``redact`` model, llama.cpp, concurrency 1).

Where Switchyard's time goes: every request carries an ``X-Request-Id``; the API's request log row of
that id holds the API's own TTFT (arrival to the first token written) and the job's queue time
(accepted to the worker's attempt start: dispatch and Temporal's tasks). With the engine's TTFT from
the paired direct call, a streamed request's time splits into ingress (client → Nginx → API and back),
accept + dispatch + Temporal, the engine, and the token relay (worker → Redis → API), the rest.

LiteLLM runs from its own venv (``build-support/setup-litellm.sh``, pinned in
``benchmarks/litellm-pins.txt``; telemetry and the remote model-cost fetch off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy.engine import make_url

from switchyard.devstack.models import cache_dir
from switchyard.devstack.procs import free_port
from switchyard.devstack.stack import LLM_MODEL, Stack
from switchyard_bench.stats import RESULTS, cpu_model, median_ci, pct, started_server

ROUNDS = int(os.environ.get("SWITCHYARD_BENCH_LLM_ROUNDS", "60"))
CONCURRENCY = (1, 4)
MAX_TOKENS = 24
TOPICS = ["the sea", "a train", "mountains", "a city at night", "coffee", "a library", "winter", "robots", "a garden", "the moon"]
LITELLM_VENV = "litellm"
# The pass-policy twins of the shipped models that the comparison uses (switchyard_bench.__main__ adds them).
PASS_MODELS = {"llamacpp": "smollm2-llm-bench-pass", "vllm": "smollm2-vllm-bench-pass"}


def overlay(state_dir: Path, engine_port: int, vllm_port: int | None) -> Path:
    """The catalog overlay with the pass-policy twins (same engines as the shipped models)."""
    models = [{"name": PASS_MODELS["llamacpp"], "domain": "llm", "kind": "chat", "context_length": 2048, "pii": "pass",
               "endpoints": [{"engine": "llamacpp", "url": f"http://127.0.0.1:{engine_port}", "engine_model": LLM_MODEL}]}]
    if vllm_port is not None:
        models.append({"name": PASS_MODELS["vllm"], "domain": "llm", "kind": "chat", "context_length": 2048, "pii": "pass",
                       "endpoints": [{"engine": "vllm", "url": f"http://127.0.0.1:{vllm_port}", "engine_model": LLM_MODEL}]})
    path = state_dir / "catalog-llm-bench.json"
    path.write_text(json.dumps({"models": models}))
    return path


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # base URL of an OpenAI API (".../v1" is added)
    model: str
    headers: dict[str, str]
    switchyard: bool = False


@dataclass
class Sample:
    ttft_ms: float
    itl_ms: float | None
    request_id: str


def _prompt() -> str:
    return f"[{uuid.uuid4().hex[:12]}] Write a long story about {random.choice(TOPICS)}."


async def streamed(http: httpx.AsyncClient, t: Target) -> Sample:
    rid = f"bench-{uuid.uuid4().hex}"
    body = {"model": t.model, "messages": [{"role": "user", "content": _prompt()}], "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0.0}
    for attempt in (1, 2):
        t0 = time.perf_counter()
        stamps: list[float] = []
        try:
            async with http.stream("POST", f"{t.url}/v1/chat/completions", json=body, headers={**t.headers, "X-Request-Id": rid}) as r:
                assert r.status_code == 200, (t.name, (await r.aread())[:300])
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        if (choices[0].get("delta") or {}).get("content"):
                            stamps.append(time.perf_counter())
            break
        except httpx.RemoteProtocolError:  # a pooled connection the server had closed: once more, timed anew
            if attempt == 2 or stamps:
                raise
    assert stamps, f"{t.name}: no token"
    itl = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000 if len(stamps) > 1 else None
    return Sample((stamps[0] - t0) * 1000, itl, rid)


async def whole(http: httpx.AsyncClient, t: Target) -> Sample:
    rid = f"bench-{uuid.uuid4().hex}"
    body = {"model": t.model, "messages": [{"role": "user", "content": _prompt()}], "max_tokens": 1, "temperature": 0.0}
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            r = await http.post(f"{t.url}/v1/chat/completions", json=body, headers={**t.headers, "X-Request-Id": rid})
            break
        except httpx.RemoteProtocolError:  # as in streamed()
            if attempt == 2:
                raise
    assert r.status_code == 200, (t.name, r.text[:300])
    return Sample((time.perf_counter() - t0) * 1000, None, rid)


async def interleaved(targets: list[Target], concurrency: int, stream: bool, rounds: int, warmup: int = 3) -> dict[str, list[Sample]]:
    """Per round, every target in a fresh random order, ``concurrency`` requests at once each."""
    out: dict[str, list[Sample]] = {t.name: [] for t in targets}
    call = streamed if stream else whole
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=1.0)) as http:
        for i in range(warmup + rounds):
            order = random.sample(targets, len(targets))
            for t in order:
                got = await asyncio.gather(*(call(http, t) for _ in range(concurrency)))
                if i >= warmup:
                    out[t.name].extend(got)
    return out


def _rows(label: str, samples: dict[str, list[Sample]], field: str) -> list[dict[str, Any]]:
    rows = []
    for name, ss in samples.items():
        v = [getattr(s, field) for s in ss if getattr(s, field) is not None]
        if v:
            rows.append({"measurement": f"{label}: {name}", "n": len(v), "p50_ms": round(statistics.median(v), 2), "p99_ms": round(pct(v, 99), 2)})
    return rows


def _paired(label: str, samples: dict[str, list[Sample]], field: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        d = [x - y for sa, sb in zip(samples[a], samples[b], strict=True)
             if (x := getattr(sa, field)) is not None and (y := getattr(sb, field)) is not None]
        if d:
            med, lo, hi = median_ci(d)
            rows.append({"measurement": f"{label}: {a} − {b}", "n": len(d), "median_ms": round(med, 2), "ci95_ms": [round(lo, 2), round(hi, 2)],
                         "p99_diff_ms": round(pct(d, 99), 2)})
    return rows


def _request_rows(dsn: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The API's request-log rows of these request ids (written in batches: waits until all are in)."""
    url = make_url(dsn)

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, database=url.database)
        try:
            return list(await conn.fetch("SELECT request_id, ttft_ms, queue_ms, total_ms FROM requests WHERE request_id = ANY($1::text[])", ids))
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    while True:
        rows = asyncio.run(fetch())
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return {r["request_id"]: {"ttft_ms": r["ttft_ms"], "queue_ms": r["queue_ms"], "total_ms": r["total_ms"]} for r in rows}
        time.sleep(0.5)


def breakdown(dsn: str, label: str, samples: dict[str, list[Sample]], engine: str, lane: str) -> list[dict[str, Any]]:
    """Where a streamed Switchyard request's TTFT goes (medians over the round's paired requests)."""
    rows = _request_rows(dsn, [s.request_id for s in samples[lane]])
    ingress, dispatch, relay, api_ttft = [], [], [], []
    for eng, sw in zip(samples[engine], samples[lane], strict=True):
        row = rows.get(sw.request_id)
        if not row or row["ttft_ms"] is None or row["queue_ms"] is None:
            continue
        api_ttft.append(row["ttft_ms"])
        ingress.append(sw.ttft_ms - row["ttft_ms"])
        dispatch.append(row["queue_ms"])
        relay.append(row["ttft_ms"] - row["queue_ms"] - eng.ttft_ms)
    if not api_ttft:
        return []
    med = statistics.median
    return [{"measurement": f"{label}: {what}", "n": len(v), "median_ms": round(med(v), 2)} for what, v in (
        ("client TTFT", [s.ttft_ms for s in samples[lane]]),
        ("the API's TTFT (arrival → first token written; request log)", api_ttft),
        ("ingress: client ↔ Nginx ↔ API (client TTFT − API TTFT)", ingress),
        ("accepted → attempt start (the API's fast start, or a worker's via Temporal; request log queue_ms)", dispatch),
        ("engine TTFT (the paired direct call)", [s.ttft_ms for s in samples[engine]]),
        ("accept + engine call set-up + token relay (API TTFT − queue − engine TTFT)", relay),
    )]


# ------------------------------------------------------------------ LiteLLM's proxy


def litellm_bin() -> Path:
    return cache_dir() / LITELLM_VENV / "venv" / "bin" / "litellm"


def start_litellm(state_dir: Path, engines: dict[str, str], master_key: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy (``workers`` processes, no database) with one model per engine URL; callers
    present ``master_key`` (its key check, as Switchyard's, is admission before the engine)."""
    cfg = state_dir / "litellm.yaml"
    model_list = [{"model_name": name, "litellm_params": {"model": f"openai/{LLM_MODEL}", "api_base": f"{url}/v1", "api_key": "none"}}
                  for name, url in engines.items()]
    cfg.write_text(json.dumps({"model_list": model_list, "litellm_settings": {"telemetry": False, "drop_params": False}}))
    port = free_port()
    env = {**os.environ, "LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True"}
    env.pop("DATABASE_URL", None)
    log = state_dir / "logs" / "litellm.log"
    # Several workers: uvicorn's supervisor kills a worker that has not answered its health check in
    # 5 s, and importing LiteLLM's proxy takes longer than that on 2 busy cores (workers die in a loop).
    many = ["--timeout_worker_healthcheck", "300"] if workers > 1 else []
    # Its own process group: stop_litellm ends the workers with it.
    proc = subprocess.Popen([str(litellm_bin()), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers), *many],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        return started_server("LiteLLM", proc, f"{url}/health/liveliness", log, 180 * workers), url
    except BaseException:
        stop_litellm(proc)
        raise


def stop_litellm(proc: subprocess.Popen[bytes]) -> None:
    """LiteLLM and its workers (its process group): SIGTERM, then SIGKILL to whatever is left after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


# ------------------------------------------------------------------ the run


def run(stack: Stack) -> None:
    cpu = cpu_model()
    print(f"host CPU: {cpu}")
    engines = {"llamacpp": f"http://127.0.0.1:{stack.cfg.engine_port}"}
    if stack.cfg.vllm:
        engines["vllm"] = f"http://127.0.0.1:{stack.cfg.vllm_port}"
    litellm_key = f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    proxy, litellm_url = start_litellm(stack.cfg.state_dir, engines, litellm_key)
    auth = {"Authorization": f"Bearer {stack.dev_key}"}
    results: dict[str, list[dict[str, Any]]] = {"latency": [], "paired": [], "breakdown": []}
    try:
        for engine, url in engines.items():
            targets = [Target(f"{engine} direct", url, LLM_MODEL, {}), Target("LiteLLM", litellm_url, engine, {"Authorization": f"Bearer {litellm_key}"}),
                       Target("Switchyard", stack.ingress, PASS_MODELS[engine], auth, switchyard=True)]
            pairs = [("LiteLLM", f"{engine} direct"), ("Switchyard", f"{engine} direct"), ("Switchyard", "LiteLLM")]
            for conc in CONCURRENCY:
                label = f"{engine}, concurrency {conc}"
                print(f"{label}: streamed, {ROUNDS} rounds", flush=True)
                s = asyncio.run(interleaved(targets, conc, True, ROUNDS))
                results["latency"] += _rows(f"{label}, TTFT", s, "ttft_ms") + _rows(f"{label}, inter-token", s, "itl_ms")
                results["paired"] += _paired(f"{label}, TTFT", s, "ttft_ms", pairs) + _paired(f"{label}, inter-token", s, "itl_ms", pairs)
                results["breakdown"] += breakdown(stack.cfg.postgres_dsn, label, s, f"{engine} direct", "Switchyard")
                print(f"{label}: max_tokens=1, not streamed", flush=True)
                w = asyncio.run(interleaved(targets, conc, False, ROUNDS))
                results["latency"] += _rows(f"{label}, max_tokens=1 whole", w, "ttft_ms")
                results["paired"] += _paired(f"{label}, max_tokens=1 whole", w, "ttft_ms", pairs)
        # PII redaction's cost on its own line: the shipped redact-policy model beside its pass twin.
        redact = [Target("Switchyard pass", stack.ingress, PASS_MODELS["llamacpp"], auth), Target("Switchyard redact", stack.ingress, LLM_MODEL, auth)]
        r = asyncio.run(interleaved(redact, 1, True, ROUNDS))
        results["paired"] += _paired("llamacpp, concurrency 1, TTFT", r, "ttft_ms", [("Switchyard redact", "Switchyard pass")])
    finally:
        stop_litellm(proxy)
    text = report(cpu, results)
    print(text)
    meta = {"bench": "llm_gateway", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "rounds": ROUNDS, "concurrency": CONCURRENCY, "max_tokens": MAX_TOKENS, "litellm": "litellm[proxy]==1.108.7"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_gateway.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    (RESULTS / "llm_gateway.md").write_text(f"# llm_gateway\n\n{json.dumps(meta, indent=2)}\n\n{text}\n")
    print(f"results: {RESULTS / 'llm_gateway.md'}")


def report(cpu: str, results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"Host CPU: {cpu}", "", "| latency | n | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['measurement']} | {r['n']} | {r['p50_ms']} | {r['p99_ms']} |" for r in results["latency"]]
    lines += ["", "| paired difference per request | n | median ms | 95 % CI | p99 of differences |", "|---|---|---|---|---|"]
    lines += [f"| {r['measurement']} | {r['n']} | {r['median_ms']:+.2f} | [{r['ci95_ms'][0]:+.2f}, {r['ci95_ms'][1]:+.2f}] | {r['p99_diff_ms']:+.2f} |"
              for r in results["paired"]]
    lines += ["", "| where Switchyard's streamed TTFT goes (medians) | n | ms |", "|---|---|---|"]
    lines += [f"| {r['measurement']} | {r['n']} | {r['median_ms']} |" for r in results["breakdown"]]
    return "\n".join(lines)

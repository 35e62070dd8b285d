"""LLM capacity (issue 14, item 3): the highest request rate, and the aggregate token rate, that
LiteLLM's proxy and Switchyard each carry with p99 TTFT <= 500 ms and no error, with one API process
and scaled to more (Switchyard: ``SWITCHYARD_API_WORKERS``; LiteLLM: ``--num_workers``), and which
component saturates first.

The engine is the ENGINE STAND-IN (switchyard.devstack.engine_standin: made-up tokens at a fixed
rate, not a model; LiteLLM's own published proxy benchmarks use a mock OpenAI endpoint the same way),
so the gateways, not the engine, are what runs out: first token after ``TTFT_MS``, then one token every
``ITL_MS``, ``MAX_TOKENS`` tokens per stream, any number of streams at once. It is measured alone
first (the same open loop straight at it), and its CPU is sampled in every step.

Open loop (vision.py's method): at each rate, requests start on schedule whatever the answers, for
``STEP_SECONDS``; TTFT counts from the scheduled start, so queueing counts. Each step's targets run
back to back in alternating order; a target stops climbing after the first rate it fails. The
generator is a lean streaming client (httptools on uvloop, keep-alive connections: httpx's per-line
cost would make the generator the bottleneck on these 2 cores) and shares the machine's cores with
everything else: its CPU is a row of the table. Per step, /proc gives each component's CPU
(switchyard_bench.cpu): API, worker-llm, Temporal, PostgreSQL (the bench database's backends), Redis,
Nginx, LiteLLM, the stand-in, the client, and the machine's total.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import uvloop
from sqlalchemy.engine import make_url

from switchyard.devstack.procs import free_port
from switchyard.devstack.stack import Stack, StackConfig, fresh_database
from switchyard_bench import cpu
from switchyard_bench.llm import start_litellm, stop_litellm
from switchyard_bench.stats import RESULTS, cpu_model, pct, started_server

TTFT_MS, ITL_MS, MAX_TOKENS = 20.0, 5.0, 24
STEP_SECONDS = float(os.environ.get("SWITCHYARD_BENCH_CAPACITY_SECONDS", "20"))
RATES = tuple(int(r) for r in os.environ.get("SWITCHYARD_BENCH_CAPACITY_RATES", "2,4,8,16,24,32,48,64,96,128,192").split(","))
# API processes (and LiteLLM workers) of the scaled runs.
SCALES = tuple(int(n) for n in os.environ.get("SWITCHYARD_BENCH_CAPACITY_SCALES", "1,2").split(","))
TTFT_BUDGET_MS = 500.0
REQUEST_TIMEOUT_S = 30.0
MODEL = "standin-capacity"  # the catalog overlay's model, served by the stand-in
STANDIN = "engine stand-in direct"


# ------------------------------------------------------------------ the lean streaming client


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection reading one streamed chat completion at a time: the time
    of the first content token and the number of content tokens (OpenAI SSE chunks)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False
        self._parser = httptools.HttpResponseParser(self)
        self._buf = b""
        self._err = b""
        self.status = 0
        self.first: float | None = None
        self.tokens = 0
        self.keep_alive = False
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("connection closed mid-answer"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if self._done is not None and not self._done.done():
                self._done.set_exception(ConnectionError(f"malformed answer: {e}"))
            self.close()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self._err += body
            return
        self._buf += body
        while (end := self._buf.find(b"\n\n")) >= 0:
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                    continue
                choices = json.loads(line[5:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    self.tokens += 1
                    if self.first is None:
                        self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def exchange(self, request: bytes) -> None:
        assert self.transport is not None
        self._buf, self._err, self.status, self.first, self.tokens, self.received = b"", b"", 0, None, 0, False
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._done

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # http://host:port
    model: str
    key: str | None = None


@dataclass
class Result:
    ttft_ms: float | None  # from the scheduled start
    tokens: int
    end: float
    error: str | None = None


class Client:
    def __init__(self, target: Target) -> None:
        self.target = target
        host, port = target.url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self._idle: deque[_Conn] = deque()
        auth = f"Authorization: Bearer {target.key}\r\n" if target.key else ""
        self._head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {target.url.removeprefix('http://')}\r\n{auth}Content-Type: application/json\r\n"

    def _request(self) -> bytes:
        body = json.dumps({"model": self.target.model, "messages": [{"role": "user", "content": f"[{uuid.uuid4().hex[:12]}] Tell me a story."}],
                           "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0.0}).encode()
        return f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def one(self, due: float) -> Result:
        req = self._request()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                while True:
                    conn = self._idle.pop() if self._idle else None
                    reused = conn is not None and not conn.closed
                    if not reused:
                        _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
                    assert conn is not None
                    try:
                        await conn.exchange(req)
                    except ConnectionError:
                        conn.close()
                        if reused and not conn.received:
                            continue  # the server closed an idle connection as we used it
                        raise
                    break
        except (OSError, TimeoutError) as e:
            return Result(None, 0, time.perf_counter(), f"{type(e).__name__}")
        if conn.keep_alive and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()
        if conn.status != 200:
            return Result(None, 0, time.perf_counter(), f"HTTP {conn.status}: {conn._err[:120]!r}")
        if conn.first is None or conn.tokens != MAX_TOKENS:
            return Result(None, conn.tokens, time.perf_counter(), f"{conn.tokens} of {MAX_TOKENS} tokens")
        return Result((conn.first - due) * 1000, conn.tokens, time.perf_counter())

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def open_loop(target: Target, rate: float, seconds: float) -> tuple[list[Result], float]:
    """``rate`` requests per second for ``seconds``, each started on schedule; (results, seconds from
    the first scheduled start to the last answer's end)."""
    async def go() -> tuple[list[Result], float]:
        client = Client(target)
        start = time.perf_counter() + 0.05
        total = int(rate * seconds)

        async def one(i: int) -> Result:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            return await client.one(due)

        try:
            out = await asyncio.gather(*(one(i) for i in range(total)))
        finally:
            client.close()
        return list(out), max(r.end for r in out) - start

    return uvloop.run(go())


# ------------------------------------------------------------------ one step, and the ramp


def step(target: Target, rate: int, sampler: cpu.Sampler) -> dict[str, Any]:
    sampler.start()
    results, secs = open_loop(target, rate, STEP_SECONDS)
    usage = sampler.stop()
    ok = [r for r in results if r.error is None]
    ttfts = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    errors = [r.error for r in results if r.error is not None]
    p99 = round(pct(ttfts, 99), 1) if ttfts else None
    row: dict[str, Any] = {"target": target.name, "rate": rate, "n": len(results), "errors": len(errors), "first_error": errors[0] if errors else None,
           "p50_ttft_ms": round(statistics.median(ttfts), 1) if ttfts else None, "p99_ttft_ms": p99,
           "achieved_rps": round(len(ok) / secs, 1), "tokens_per_s": round(sum(r.tokens for r in ok) / secs, 0),
           "cpu_pct": usage.component, "busiest_process_pct": usage.busiest_process, "machine_cpu_pct": usage.machine, "other_cpu_pct": usage.other}
    row["holds"] = not errors and p99 is not None and p99 <= TTFT_BUDGET_MS
    print(f"  {target.name:<34} {rate:>4} req/s: p50 {row['p50_ttft_ms']} ms, p99 {row['p99_ttft_ms']} ms, {len(errors)} errors, "
          f"{row['achieved_rps']} req/s, {row['tokens_per_s']:.0f} tok/s, machine CPU {usage.machine:.0f} %  {'' if row['holds'] else '(fails)'}",
          flush=True)
    if errors:
        print(f"    first error: {errors[0]}", flush=True)
    return row


def ramp(targets: list[Target], sampler: cpu.Sampler, label: str) -> list[dict[str, Any]]:
    """Every target at each rate (back to back, alternating order) until it fails one; the stand-in
    (the reference) only while a gateway still climbs."""
    rows: list[dict[str, Any]] = []
    climbing = list(targets)
    for i, rate in enumerate(RATES):
        if all(t.name == STANDIN for t in climbing):
            break
        for t in (climbing if i % 2 == 0 else list(reversed(climbing))):
            row = step(t, rate, sampler)
            row["config"] = label
            rows.append(row)
            time.sleep(1.0)  # let the last step's bookkeeping (job.finish, request log) settle
        climbing = [t for t in climbing if next(r for r in rows if r["target"] == t.name and r["rate"] == rate)["holds"]]
    return rows


# ------------------------------------------------------------------ the run


def start_standin(state_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = state_dir / "logs" / "engine-standin.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "switchyard.devstack.engine_standin", "--port", str(port), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    return started_server("engine stand-in", proc, f"{url}/health", log, 30), url


def overlay(state_dir: Path, standin_url: str) -> Path:
    """The stand-in as a catalog model (vLLM's adapter: plain OpenAI streaming), PII policy ``pass``."""
    path = state_dir / "catalog-capacity.json"
    path.write_text(json.dumps({"models": [{"name": MODEL, "domain": "llm", "kind": "chat", "context_length": 4096, "pii": "pass",
                                            "endpoints": [{"engine": "vllm", "url": standin_url, "engine_model": "engine-standin"}]}]}))
    return path


def components(stack: Stack, standin: subprocess.Popen[bytes], litellm: subprocess.Popen[bytes]) -> dict[str, cpu.Select]:
    def root(name: str) -> int:
        popen = stack.procs[name].popen
        assert popen is not None
        return popen.pid

    db = make_url(stack.cfg.postgres_dsn).database
    mine = ("api", "worker-llm", "temporal", "nginx")
    rest = [p.popen.pid for name, p in stack.procs.items() if name not in mine and p.popen is not None]
    return {"API": cpu.tree(root("api")), "worker-llm": cpu.tree(root("worker-llm")), "Temporal": cpu.tree(root("temporal")),
            "PostgreSQL": cpu.named("postgres", f" {db} "), "Redis": cpu.named("redis-server"), "Nginx": cpu.tree(root("nginx")),
            "LiteLLM": cpu.tree(litellm.pid), "engine stand-in": cpu.tree(standin.pid), "client": cpu.only(os.getpid()),
            # idle here: the llama.cpp engines, the fake SGLang, other workers
            "rest of the stack": cpu.tree(*rest)}


def run(make_config: Callable[[int], StackConfig]) -> None:
    """Per scale (API processes = LiteLLM workers): a stack, the stand-in, LiteLLM; the ramp."""
    cpu_desc = cpu_model()
    print(f"host CPU: {cpu_desc}; {len(os.sched_getaffinity(0))} cores shared by the generator and every component")
    rows: list[dict[str, Any]] = []
    for scale in SCALES:
        cfg = make_config(scale)
        standin, standin_url = start_standin(cfg.state_dir)
        try:
            cfg.catalog_overlays.append(overlay(cfg.state_dir, standin_url))
            fresh_database(cfg.postgres_dsn, cfg.redis_url)  # nothing left by an earlier run
            stack = Stack(cfg)
            stack.start()
            try:
                key = stack.create_key("capacity", tier="high", name="capacity benchmark", rps=1_000_000, max_streams=1_000_000, tpm=2_000_000_000)
                litellm_key = f"sk-{uuid.uuid4().hex}"
                litellm, litellm_url = start_litellm(cfg.state_dir, {MODEL: standin_url}, litellm_key, workers=scale)
                try:
                    sampler = cpu.Sampler(components(stack, standin, litellm))
                    label = f"{scale} API process{'es' if scale > 1 else ''} / LiteLLM worker{'s' if scale > 1 else ''}"
                    print(f"{label}: {STEP_SECONDS:.0f} s per step, rates {RATES}", flush=True)
                    targets = [Target(f"LiteLLM ({scale} worker{'s' if scale > 1 else ''})", litellm_url, MODEL, litellm_key),
                               Target(f"Switchyard via Nginx ({scale} API proc.)", stack.ingress, MODEL, key)]
                    if scale == SCALES[0]:
                        targets.insert(0, Target(STANDIN, standin_url, "engine-standin"))
                    for t in targets:  # warm-up: connections, pools, first-use paths
                        open_loop(t, 4, 2)
                    rows += ramp(targets, sampler, label)
                finally:
                    stop_litellm(litellm)
            finally:
                stack.stop()
        finally:
            standin.terminate()
            standin.wait(timeout=10)
        write(cpu_desc, rows)  # after each scale: a run cut short keeps what it measured


def write(cpu_desc: str, rows: list[dict[str, Any]]) -> None:
    text = report(cpu_desc, rows)
    print(text)
    meta = {"bench": "llm_capacity", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_desc, "cores": len(os.sched_getaffinity(0)),
            "engine": f"ENGINE STAND-IN (switchyard.devstack.engine_standin, not a model): TTFT {TTFT_MS:g} ms, then {ITL_MS:g} ms per token",
            "max_tokens": MAX_TOKENS, "step_seconds": STEP_SECONDS, "rates": RATES, "ttft_budget_ms": TTFT_BUDGET_MS,
            "litellm": "litellm[proxy]==1.108.7", "switchyard_path": "client → Nginx → API → Temporal → worker-llm → stand-in; tokens via Redis → API"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_capacity.json").write_text(json.dumps({"meta": meta, "steps": rows}, indent=2))
    (RESULTS / "llm_capacity.md").write_text(f"# llm_capacity\n\n{json.dumps(meta, indent=2)}\n\n{text}\n")
    print(f"results: {RESULTS / 'llm_capacity.md'}")


COLUMNS = ("API", "worker-llm", "Temporal", "PostgreSQL", "Redis", "Nginx", "LiteLLM", "engine stand-in", "client", "rest of the stack")


def report(cpu_desc: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"Host CPU: {cpu_desc}. The load generator shares the cores with every component.", "",
             "| config | target | req/s offered | achieved req/s | tokens/s | p50 TTFT ms | p99 TTFT ms | errors | holds | "
             + " | ".join(f"CPU {c} %" for c in COLUMNS) + " | machine CPU % | other % |",
             "|" + "---|" * (9 + len(COLUMNS) + 2)]
    for r in rows:
        cpus = " | ".join(_cpu_cell(r, c) for c in COLUMNS)
        lines.append(f"| {r['config']} | {r['target']} | {r['rate']} | {r['achieved_rps']} | {r['tokens_per_s']:.0f} | {r['p50_ttft_ms']} | {r['p99_ttft_ms']} | "
                     f"{r['errors']} | {'yes' if r['holds'] else 'NO'} | {cpus} | {r['machine_cpu_pct']} | {r['other_cpu_pct']} |")
    lines += ["", f"Highest rate held (p99 TTFT <= {TTFT_BUDGET_MS:.0f} ms, no error) and what it carried:", "",
              "| config | target | highest rate held, req/s | achieved req/s | tokens/s | p99 TTFT ms | first failing rate | busiest processes there (% of a core) |",
              "|---|---|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        for target in dict.fromkeys(r["target"] for r in rows if r["config"] == config):
            mine = [r for r in rows if r["config"] == config and r["target"] == target]
            held = [r for r in mine if r["holds"]]
            best = max(held, key=lambda r: r["rate"]) if held else None
            fail = next((r for r in mine if not r["holds"]), None)
            busiest = ", ".join(f"{k} {v}" for k, v in sorted((fail or best or mine[-1])["busiest_process_pct"].items(), key=lambda kv: -kv[1])[:4])
            lines.append(f"| {config} | {target} | {best['rate'] if best else 0} | {best['achieved_rps'] if best else '-'} | "
                         f"{best['tokens_per_s'] if best else '-'} | {best['p99_ttft_ms'] if best else '-'} | "
                         f"{fail['rate'] if fail else f'none up to {RATES[-1]}'} | {busiest} |")
    lines += ["", "CPU time per request (contention on the machine inflates latency far more than this):", "", cpu_per_request(rows)]
    return "\n".join(lines)


# The components each target's requests run through (the client and the stand-in serve every target).
PATH_COMPONENTS = {"LiteLLM": ("LiteLLM",), "Switchyard": ("Nginx", "API", "worker-llm", "Temporal", "PostgreSQL", "Redis"), "engine stand-in": ()}


def cpu_per_request(rows: list[dict[str, Any]]) -> str:
    """CPU time per completed request (ms), per component on the target's path, at the highest rate
    each target held (or its lowest rate): a figure other load on the machine barely moves, unlike
    latency, and what bounds the rate on these cores: ceiling = cores × 1000 ms / (the path's ms +
    the stand-in's + the client's)."""
    cores = len(os.sched_getaffinity(0))
    lines = ["| config | target | at req/s | CPU ms per request on its path | stand-in + client ms | ceiling on "
             f"{cores} cores, req/s | path's split, ms per request |", "|---|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        for target in dict.fromkeys(r["target"] for r in rows if r["config"] == config):
            mine = [r for r in rows if r["config"] == config and r["target"] == target]
            r = max((x for x in mine if x["holds"]), key=lambda x: x["rate"], default=mine[0])
            comps = next(v for k, v in PATH_COMPONENTS.items() if target.startswith(k))
            per = {c: 10 * r["cpu_pct"].get(c, 0.0) / r["achieved_rps"] for c in comps}  # % of a core → ms per second, / req per second
            shared = 10 * (r["cpu_pct"].get("engine stand-in", 0.0) + r["cpu_pct"].get("client", 0.0)) / r["achieved_rps"]
            total = sum(per.values())
            split = ", ".join(f"{c} {v:.1f}" for c, v in sorted(per.items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| {config} | {target} | {r['rate']} | {total:.1f} | {shared:.1f} | {cores * 1000 / (total + shared):.0f} | {split} |")
    return "\n".join(lines)


def _cpu_cell(r: dict[str, Any], c: str) -> str:
    total, one = r["cpu_pct"].get(c, 0.0), r["busiest_process_pct"].get(c, 0.0)
    return f"{total:.0f}" if abs(total - one) < 1 else f"{total:.0f} (max {one:.0f})"

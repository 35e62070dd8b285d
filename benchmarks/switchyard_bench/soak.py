"""Soak: ``./switchyard bench soak`` — mixed open-loop load over every domain for ``--duration-s``
(default 600 s, after a ``--warmup-s`` warm-up under the same load) at stated rates, on one stack
with every part (the LLM engines, Triton, the three workers, the API, Nginx, Temporal).

Each lane starts requests on schedule (request i at i/rate s) whatever the answers, so a stack that
slows down shows it as latency from the scheduled start, not as a lower rate; the default rates are
ones this 2-core host carries without queueing. Pass/fail is the issue's: no error beyond those
injected (``--inject-bad N`` sends N known-bad requests, each of which must get exactly its 4xx or
failed job), and every process's memory flat. Memory: the resident set of each part's process tree
(soak's rss.py) when the load starts, after the warm-up (start), every ``--sample-every-s`` and at
the end; a part is "flat" when the least-squares line through its samples after the warm-up rises
by less than max(3 % of its start RSS, 5 MB) over the run. The machine-wide Redis and PostgreSQL are
shared with whatever else runs here: Redis's own accounting is listed for information only.
Latency percentiles cover the measured window; sent/ok/errors count the warm-up too.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import uvloop

from switchyard.devstack.models import cache_dir, sample_images
from switchyard.devstack.stack import GEMMA_MODEL, LLM_MODEL, SGLANG_MODEL, VLLM_MODEL, Stack
from switchyard_bench.recsys import queries
from switchyard_bench.rss import rss_bytes, tree_rss
from switchyard_bench.soak_lanes import INJECTED, Bad, Lanes, Outcome
from switchyard_bench.stats import RESULTS, cpu_model, pct

# req/s per lane; `--rate LANE=RPS` changes one (0 turns it off).
DEFAULT_RATES: dict[str, float] = {
    "llm-chat": 0.5,
    "llm-job": 0.1,
    "embeddings": 0.2,
    "vision-v2": 5.0,
    "vision-grpc": 2.0,
    "vision-job": 0.05,
    "recsys": 10.0,
    "recsys-job": 0.05,
}
WHAT = {
    "llm-chat": "POST /v1/chat/completions, streamed, max_tokens 16, the LLM models in turn",
    "llm-job": "POST /v1/jobs (llm, max_tokens 32, models in turn), followed over SSE; text = stored result",
    "embeddings": "POST /v1/embeddings (smollm2-135m-embed)",
    "vision-v2": "V2 REST infer vision-classify (palace photo) via Nginx",
    "vision-grpc": "V2 gRPC infer vision-classify via Nginx's gRPC ingress",
    "vision-job": "POST /v1/jobs (vision, 4 images), followed over SSE",
    "recsys": "POST /v1/recommendations, k=10, recsys-rank / -triton in turn, half with 100 candidates",
    "recsys-job": "POST /v1/jobs (recsys, 20 users, k=5), followed over SSE",
    "injected": "known-bad requests (--inject-bad), each must get its exact 4xx / failed job",
}
TIMEOUT_S = 180.0
MAX_IN_FLIGHT = 200  # per lane: beyond it the stack is queueing, and the request counts as an error
FLAT_FRACTION, FLAT_MB = 0.03, 5.0
MB = 1024 * 1024
ERROR_MARKS = ('"level": "ERROR"', '"level": "CRITICAL"', "Traceback (most recent call last)")


@dataclass
class Record:
    lane: str
    sub: str | None
    t: float  # scheduled start, s after the load started
    ms: float  # scheduled start → answer complete
    ttft_ms: float | None
    error: str | None
    injected: bool
    resets: int


@dataclass
class Sample:
    t: float
    rss: dict[str, int | None]


class Soak:
    def __init__(self, stack: Stack, rates: dict[str, float], duration_s: float, warmup_s: float, sample_every_s: float, inject_bad: int) -> None:
        self.stack, self.rates, self.duration_s, self.warmup_s = stack, rates, duration_s, warmup_s
        self.sample_every_s, self.inject_bad = sample_every_s, inject_bad
        self.records: list[Record] = []
        self.samples: list[Sample] = []
        self.examples: dict[tuple[str, str], str] = {}
        self.exited: list[str] = []
        self.redis = redis.Redis.from_url(stack.cfg.redis_url)
        self.t0 = 0.0
        self.log_offsets: dict[Path, int] = {}

    # ------------------------------------------------------------------ load

    def lanes(self, lanes: Lanes) -> dict[str, tuple[Callable[[int], Awaitable[Outcome]], float, int]]:
        """name → (request, rate, how many) over the whole run."""
        total = self.warmup_s + self.duration_s
        fns = {"llm-chat": lanes.llm_chat, "llm-job": lanes.llm_job, "embeddings": lanes.embeddings, "vision-v2": lanes.vision_v2,
               "vision-grpc": lanes.vision_grpc, "vision-job": lanes.vision_job, "recsys": lanes.recsys, "recsys-job": lanes.recsys_job}
        out: dict[str, tuple[Callable[[int], Awaitable[Outcome]], float, int]] = {name: (fns[name], rate, int(rate * total)) for name, rate in self.rates.items() if rate > 0}
        if self.inject_bad:
            out["injected"] = (lanes.injected, self.inject_bad / total, self.inject_bad)
        return out

    async def _one(self, lane: str, fn: Callable[[int], Awaitable[Outcome]], i: int, due: float) -> None:
        out, error = Outcome(), None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                out = await fn(i)
        except Bad as e:
            error = e.kind
            if e.example:
                self.examples.setdefault((lane, error), e.example)
        except TimeoutError:
            error = f"no answer in {TIMEOUT_S:.0f} s"
        except Exception as e:  # a refused connection, a broken stream: counted by type
            error = type(e).__name__
            self.examples.setdefault((lane, error), str(e)[:300])
        self.records.append(Record(lane, out.sub, due - self.t0, (time.perf_counter() - due) * 1000, out.ttft_ms, error,
                                   out.injected or lane == "injected", out.resets))

    async def _drive(self, lane: str, fn: Callable[[int], Awaitable[Outcome]], rate: float, n: int) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        for i in range(n):
            due = self.t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.records.append(Record(lane, None, due - self.t0, 0.0, None, f"over {MAX_IN_FLIGHT} in flight (queueing)", lane == "injected", 0))
                continue
            task = asyncio.create_task(self._one(lane, fn, i, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)

    # ------------------------------------------------------------------ memory

    def _pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self.stack.procs.items() if p.popen is not None}

    def _sample(self) -> Sample:
        rss = tree_rss(self._pids())
        rss["load generator (this process)"] = rss_bytes(os.getpid())
        try:
            info = self.redis.info("memory")
            rss["redis used_memory (machine-wide, shared)"] = int(info["used_memory"])
        except redis.RedisError:
            rss["redis used_memory (machine-wide, shared)"] = None
        for name, p in self.stack.procs.items():
            if p.popen is not None and p.popen.poll() is not None and name not in self.exited:
                self.exited.append(name)
        return Sample(time.perf_counter() - self.t0, rss)

    async def _sampler(self) -> None:
        end = self.warmup_s + self.duration_s
        times = [0.0, self.warmup_s]
        while times[-1] + self.sample_every_s < end - 1:
            times.append(times[-1] + self.sample_every_s)
        times.append(end)
        for t in times:
            await asyncio.sleep(max(0.0, self.t0 + t - time.perf_counter()))
            self.samples.append(await asyncio.to_thread(self._sample))
            failed = sum(r.error is not None for r in self.records)
            print(f"soak: t={t:.0f} s, {len(self.records)} requests answered, {failed} errors", flush=True)

    async def run(self) -> None:
        models = cache_dir() / "recsys" / "models"
        popular = [int(p["item_id"]) if isinstance(p, dict) else int(p) for p in json.loads((models / "popular_items.json").read_text())]
        n_users = int(json.loads((models / "training_report.json").read_text())["data"]["users"])
        c = self.stack.cfg
        llm_models = [LLM_MODEL, GEMMA_MODEL, SGLANG_MODEL] + ([VLLM_MODEL] if c.vllm else [])
        lanes = Lanes(self.stack.ingress, f"127.0.0.1:{c.grpc_port}", self.stack.dev_key, llm_models, sample_images(),
                      queries(500, n_users, popular))
        try:
            plan = self.lanes(lanes)
            print(f"soak: {self.warmup_s:.0f} s warm-up + {self.duration_s:.0f} s measured; "
                  + ", ".join(f"{name} {rate:g}/s" for name, (_, rate, _) in plan.items()), flush=True)
            self.log_offsets = {p: p.stat().st_size for p in self._logs()}
            self.t0 = time.perf_counter()
            await asyncio.gather(self._sampler(), *(self._drive(name, fn, rate, n) for name, (fn, rate, n) in plan.items()))
        finally:
            await lanes.close()

    # ------------------------------------------------------------------ report

    def _logs(self) -> list[Path]:
        return sorted((self.stack.cfg.state_dir / "logs").glob("*.log"))

    def logged_errors(self) -> dict[str, int]:
        """Per log, the lines written during the load that report an error (ERROR/CRITICAL JSON log
        lines, Python tracebacks): what the parts saw even where no client did."""
        out: dict[str, int] = {}
        for path in self._logs():
            with path.open("rb") as f:
                f.seek(self.log_offsets.get(path, 0))
                text = f.read().decode(errors="replace")
            n = sum(1 for line in text.splitlines() if any(m in line for m in ERROR_MARKS))
            if n:
                out[path.stem] = n
        return out

    def lane_rows(self) -> list[dict[str, Any]]:
        rows = []
        keys = sorted({(r.lane, r.sub) for r in self.records if not r.injected}, key=lambda k: (list(WHAT).index(k[0]), k[1] or ""))
        for lane in dict.fromkeys(k[0] for k in keys):
            subs = [None] + [s for (ln, s) in keys if ln == lane and s is not None]
            for sub in subs if len(subs) > 2 else [None]:
                rs = [r for r in self.records if r.lane == lane and not r.injected and (sub is None or r.sub == sub)]
                rows.append(self._row(lane, sub, rs))
        inj = [r for r in self.records if r.injected]
        if inj:
            rows.append(self._row("injected", None, inj))
        return rows

    def _row(self, lane: str, sub: str | None, rs: list[Record]) -> dict[str, Any]:
        ok = [r for r in rs if r.error is None and r.t >= self.warmup_s]
        ms = [r.ms for r in ok]
        fifth = self.duration_s / 5
        first = [r.ms for r in ok if r.t < self.warmup_s + fifth]
        last = [r.ms for r in ok if r.t >= self.warmup_s + self.duration_s - fifth]
        ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]

        def q(v: list[float], p: float) -> float | None:
            return round(pct(v, p), 1) if v else None

        return {"lane": lane if sub is None else f"  {lane}: {sub}", "rate_rps": None if sub else (self.rates.get(lane) if lane != "injected" else None),
                "sent": len(rs), "ok": sum(r.error is None for r in rs), "errors": sum(r.error is not None for r in rs),
                "achieved_rps": round(sum(r.t >= self.warmup_s for r in rs) / self.duration_s, 2),
                "p50_ms": round(statistics.median(ms), 1) if ms else None, "p99_ms": q(ms, 99), "p99_first_fifth_ms": q(first, 99),
                "p99_last_fifth_ms": q(last, 99), "ttft_p50_ms": round(statistics.median(ttft), 1) if ttft else None,
                "resets": sum(r.resets for r in rs)}

    def memory_rows(self) -> list[dict[str, Any]]:
        measured = [s for s in self.samples if s.t >= self.warmup_s - 1]
        rows: list[dict[str, Any]] = []
        for name in self.samples[0].rss:
            pts = [(s.t / 60, v / MB) for s in measured if (v := s.rss.get(name)) is not None]
            at_load = self.samples[0].rss.get(name)
            if len(pts) < 2:
                rows.append({"process": name, "verdict": "gone" if name in self.exited else "no samples"})
                continue
            x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
            slope = float(np.polyfit(x, y, 1)[0])
            rise = slope * (x[-1] - x[0])
            shared = "shared" in name
            flat = rise < max(FLAT_FRACTION * y[0], FLAT_MB)
            rows.append({"process": name, "at_load_start_mb": round(at_load / MB, 1) if at_load else None, "start_mb": round(y[0], 1),
                         "end_mb": round(y[-1], 1), "delta_mb": round(y[-1] - y[0], 1), "max_mb": round(float(y.max()), 1),
                         "slope_mb_per_min": round(slope, 3), "fit_rise_mb": round(rise, 1),
                         "verdict": "info (shared)" if shared else ("gone" if name in self.exited else ("flat" if flat else "GROWS"))})
        return rows

    def error_rows(self) -> list[dict[str, Any]]:
        counts = Counter((r.lane, r.sub, r.error) for r in self.records if r.error is not None)
        rows = [{"lane": lane + (f" ({sub})" if sub else ""), "kind": kind, "count": n, "example": self.examples.get((lane, kind), "")}
                for (lane, sub, kind), n in counts.most_common()]
        rows += [{"lane": "stack", "kind": f"process exited: {name}", "count": 1, "example": ""} for name in self.exited]
        return rows


def report(soak: Soak, lanes: list[dict[str, Any]], memory: list[dict[str, Any]], errors: list[dict[str, Any]], logged: dict[str, int],
           verdict: dict[str, Any], cpu: str) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [f"Host CPU: {cpu}; {soak.warmup_s:.0f} s warm-up + {soak.duration_s:.0f} s measured, open loop at the stated rates.", "",
             "| lane | req/s | sent | ok | errors | achieved req/s | p50 ms | p99 ms | p99 first 1/5 | p99 last 1/5 | TTFT p50 ms | resets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['lane']} | {f(r['rate_rps'])} | {r['sent']} | {r['ok']} | {r['errors']} | {r['achieved_rps']} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | "
              f"{f(r['p99_first_fifth_ms'])} | {f(r['p99_last_fifth_ms'])} | {f(r['ttft_p50_ms'])} | {r['resets']} |" for r in lanes]
    lines += ["", "| process (RSS of its tree, MB) | at load start | start (after warm-up) | end | delta | max | slope MB/min | fitted rise | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['process']} | {f(r.get('at_load_start_mb'))} | {f(r.get('start_mb'))} | {f(r.get('end_mb'))} | {f(r.get('delta_mb'))} | "
              f"{f(r.get('max_mb'))} | {f(r.get('slope_mb_per_min'))} | {f(r.get('fit_rise_mb'))} | {r['verdict']} |" for r in memory]
    lines += ["", "| errors: lane | kind | count | example |", "|---|---|---|---|"]
    lines += [f"| {r['lane']} | {r['kind']} | {r['count']} | {r['example'].replace('|', '/')} |" for r in errors] or ["| - | none | 0 | |"]
    lines += ["", "Error lines the parts logged during the load (ERROR/CRITICAL, tracebacks; information, not the verdict): "
              + (", ".join(f"{k} {v}" for k, v in logged.items()) or "none")]
    lines += ["", f"Errors beyond those injected: {verdict['errors_beyond_injected']}; injected: {verdict['injected_sent']} sent, "
              f"{verdict['injected_as_expected']} answered as expected; processes that grew: {', '.join(verdict['grew']) or 'none'}; "
              f"exited: {', '.join(soak.exited) or 'none'}. Soak {'PASSED' if verdict['passed'] else 'FAILED'}.",
              f"Flat: the least-squares line through the samples after the warm-up rises by less than max({FLAT_FRACTION:.0%} of the start RSS, {FLAT_MB:g} MB)."]
    return "\n".join(lines)


def run(stack: Stack, rates: dict[str, float], duration_s: float, warmup_s: float, sample_every_s: float, inject_bad: int) -> bool:
    cpu = cpu_model()
    print(f"host CPU: {cpu}", flush=True)
    soak = Soak(stack, rates, duration_s, warmup_s, sample_every_s, inject_bad)
    uvloop.run(soak.run())
    lanes, memory, errors = soak.lane_rows(), soak.memory_rows(), soak.error_rows()
    injected = [r for r in soak.records if r.injected]
    beyond = sum(r.error is not None for r in soak.records) + len(soak.exited)
    grew = [r["process"] for r in memory if r["verdict"] == "GROWS"]
    verdict = {"errors_beyond_injected": beyond, "injected_sent": len(injected), "injected_as_expected": sum(r.error is None for r in injected),
               "grew": grew, "passed": beyond == 0 and not grew and not soak.exited}
    logged = soak.logged_errors()
    text = report(soak, lanes, memory, errors, logged, verdict, cpu)
    print(text)
    meta = {"bench": "soak", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "duration_s": duration_s, "warmup_s": warmup_s, "sample_every_s": sample_every_s, "inject_bad": inject_bad, "rates_rps": rates,
            "lanes": {k: v for k, v in WHAT.items() if k in rates or (k == "injected" and inject_bad)},
            "injected_kinds": [{"what": w, "expected": e} for w, e in INJECTED], "llm_engines": "llama.cpp (SmolLM2, Gemma 3), FAKE SGLang over llama.cpp"
            + (", vLLM (CPU)" if stack.cfg.vllm else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps({"meta": meta, "verdict": verdict, "lanes": lanes, "memory": memory, "errors": errors, "logged_errors": logged,
                                                   "samples": [asdict(s) for s in soak.samples]}, indent=2))
    (RESULTS / "soak.md").write_text(f"# soak\n\n{json.dumps(meta, indent=2)}\n\n{text}\n")
    print(f"results: {RESULTS / 'soak.md'}")
    return bool(verdict["passed"])

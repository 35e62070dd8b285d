"""Latency statistics and the result table every benchmark prints."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from switchyard.devstack.host import host_cpu

RESULTS = Path(__file__).resolve().parents[1] / "results"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th value)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(name: str, ms: list[float], seconds: float, baseline: str | None = None) -> dict[str, Any]:
    return {"name": name, "n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(pct(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "max_ms": round(max(ms), 2), "throughput_rps": round(len(ms) / seconds, 1), "baseline": baseline}


def table(rows: list[dict[str, Any]]) -> str:
    by_name = {r["name"]: r for r in rows}
    head = f"| {'measurement':<44} | {'n':>4} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>7} | {'p50 vs baseline':>22} |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        base = by_name.get(r["baseline"] or "")
        ratio = f"x{r['p50_ms'] / base['p50_ms']:.2f} ({r['p50_ms'] - base['p50_ms']:+.1f} ms)" if base else "baseline"
        lines.append(f"| {r['name']:<44} | {r['n']:>4} | {r['p50_ms']:>8.2f} | {r['p99_ms']:>8.2f} | {r['throughput_rps']:>7.1f} | {ratio:>22} |")
    return "\n".join(lines)


def save(bench: str, rows: list[dict[str, Any]], notes: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"bench": bench, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": f"{cpu_model()}, {platform.machine()}, Python {platform.python_version()}", **notes}
    out = RESULTS / f"{bench}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / f"{bench}.md").write_text(f"# {bench}\n\n{json.dumps(meta, indent=2)}\n\n{table(rows)}\n")
    return out


def median_ci(diffs: list[float], n_boot: int = 4000, seed: int = 11) -> tuple[float, float, float]:
    """Median of the paired differences and its bootstrap 95 % interval."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(diffs)
    boots = np.median(rng.choice(arr, size=(n_boot, len(arr)), replace=True), axis=1)
    return float(np.median(arr)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def cpu_model() -> str:
    """The host's CPU and its notable SIMD flags (AVX-512 or not changes engine speed ~3x): every figure names it."""
    return host_cpu().describe()


def first_token_ms(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    """Milliseconds to the first content token of a streamed chat completion; reads the stream to its
    end, so the next request starts on an idle engine."""
    t0 = time.perf_counter()
    with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, r.read()[:200]
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content"):
                    ms = (time.perf_counter() - t0) * 1000
                    for _ in lines:
                        pass
                    return ms
    raise AssertionError("no token")


def started_server(name: str, proc: subprocess.Popen[bytes], health_url: str, log: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    """``proc`` once ``health_url`` answers 200; killed, and an error naming its log, if it exits or
    does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({log})")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{name} did not answer in {timeout_s:.0f} s ({log})")

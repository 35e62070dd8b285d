"""Shadow deployment's cost to the primary (docs/shadow.md): the same request to copies of a
model, through Nginx with the lean HTTP/1.1 client: without a shadow, shadowed at the catalog's
default sample rate (5 %), and shadowed at 100 %. Each shadowed copy is measured against the copy
without a shadow in its own run: at 5 %, one request to each per round in a shuffled order; at
100 %, alternating blocks (``_blocks``: a replay competes with whatever request follows it). The
differences are paired (median, bootstrap 95 % CI, p99 of the differences). Vision (V2 REST, one
JPEG; candidate int8 on Triton) and recsys (``/v1/recommendations``; candidate the second ranker
version).

The shadow worker replays the mirrored requests on the same 2 cores meanwhile: at 100 % the
candidate's work competes with the primary's, which is what the 100 % row shows; the budget drops
what the shadow worker cannot keep up with (the counts are in the notes).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as httpclient
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from switchyard.common.http1 import Http1Client
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack
from switchyard_bench.stats import RESULTS, cpu_model, median_ci, pct, save, summarize

ROUNDS = 300
BLOCK = 10  # requests per block in the 100 % design
BLOCK_PAUSE_S = 0.5  # after each block: the shadow worker drains what the block mirrored
DEFAULT_RATE = 0.05
COPIES = {"plain": None, "default": DEFAULT_RATE, "all": 1.0}
SHIPPED = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"
CANDIDATES = {"vision-classify": "vision-classify-int8", "recsys-rank": "recsys-rank-v2"}


def name_of(model: str, copy: str) -> str:
    return f"bench-{model}-{copy}"


def write_overlay(path: Path) -> Path:
    """Three copies of each benchmarked model: without a shadow, at the default rate, at 100 %."""
    shipped = {m["name"]: m for m in yaml.safe_load(SHIPPED.read_text())["models"]}
    models = []
    for model, candidate in CANDIDATES.items():
        for copy, rate in COPIES.items():
            m = {k: v for k, v in shipped[model].items() if k != "shadow"} | {"name": name_of(model, copy)}
            if rate is not None:
                m["shadow"] = {"candidate": candidate, "sample_rate": rate}
            models.append(m)
    path.write_text(json.dumps({"models": models}))
    return path


def requests_of(model: str, key: str) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Per copy: (path, body, headers) of one request."""
    auth = {"Authorization": f"Bearer {key}"}
    out = {}
    for copy in COPIES:
        name = name_of(model, copy)
        if model == "vision-classify":
            inp = httpclient.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object), binary_data=True)
            body, json_size = httpclient.InferenceServerClient.generate_request_body([inp], [httpclient.InferRequestedOutput("labels", binary_data=False)])
            headers = {**auth, "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
            out[copy] = (f"/v2/models/{name}/infer", body, headers)
        else:
            out[copy] = ("/v1/recommendations", json.dumps({"model": name, "user_id": 7, "k": 10}).encode(), {**auth, "Content-Type": "application/json"})
    return out


async def _interleaved(stack: Stack, reqs: dict[str, tuple[str, bytes, dict[str, str]]], rounds: int) -> dict[str, list[float]]:
    """Every round one request to each copy in ``reqs``, in a shuffled order (20 warm-up rounds not kept)."""
    client = Http1Client.for_url(stack.ingress, timeout_s=30)
    ms: dict[str, list[float]] = {c: [] for c in reqs}
    order = list(reqs)
    try:
        for i in range(rounds + 20):
            random.shuffle(order)
            for copy in order:
                took = await _one(client, copy, reqs[copy])
                if i >= 20:
                    ms[copy].append(took)
    finally:
        await client.close()
    return ms


async def _blocks(stack: Stack, reqs: dict[str, tuple[str, bytes, dict[str, str]]], rounds: int) -> dict[str, list[float]]:
    """Shadowed at 100 %: the replays compete with whatever request comes next, so one request to
    each copy per round would spread the candidate's load over both. Here blocks of ``BLOCK``
    requests to one copy alternate with blocks to the other (which goes first: shuffled per pair),
    with a pause after each block for the shadow worker to drain; request j of a shadowed block is
    paired with request j of the adjacent block without a shadow."""
    client = Http1Client.for_url(stack.ingress, timeout_s=30)
    ms: dict[str, list[float]] = {c: [] for c in reqs}
    order = list(reqs)
    try:
        for b in range(rounds // BLOCK + 2):  # 2 pairs of warm-up blocks, not kept
            random.shuffle(order)
            for copy in order:
                took = [await _one(client, copy, reqs[copy]) for _ in range(BLOCK)]
                if b >= 2:
                    ms[copy] += took
                await asyncio.sleep(BLOCK_PAUSE_S)
    finally:
        await client.close()
    return ms


async def _one(client: Http1Client, copy: str, req: tuple[str, bytes, dict[str, str]]) -> float:
    path, body, headers = req
    t0 = time.perf_counter()
    r = await client.request("POST", path, body, headers)
    took = (time.perf_counter() - t0) * 1000
    assert r.status == 200, (copy, r.status, r.body[:200])
    return took


def shadow_cases(stack: Stack) -> dict[str, dict[str, float]]:
    """The API's switchyard_shadow_cases_total by model and outcome."""
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.api_metrics_port}/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "switchyard_shadow_cases_total":
                out.setdefault(s.labels["model"], {})[s.labels["outcome"]] = s.value
    return out


def run(stack: Stack, rounds: int = ROUNDS) -> None:
    rows: list[dict[str, Any]] = []
    paired: list[dict[str, Any]] = []
    for model in CANDIDATES:
        reqs = requests_of(model, stack.dev_key)
        base = f"{model}, no shadow"
        for copy, design in (("default", _interleaved), ("all", _blocks)):
            t0 = time.perf_counter()
            ms = asyncio.run(design(stack, {"plain": reqs["plain"], copy: reqs[copy]}, rounds))
            seconds = time.perf_counter() - t0
            rate = COPIES[copy]
            assert rate is not None
            how = "interleaved per request" if design is _interleaved else f"alternating blocks of {BLOCK}"
            rows.append(summarize(f"{base} ({how})", ms["plain"], seconds))
            rows.append(summarize(f"{model}, shadowed at {rate:.0%} ({how})", ms[copy], seconds, f"{base} ({how})"))
            diffs = [a - b for a, b in zip(ms[copy], ms["plain"], strict=True)]
            med, lo, hi = median_ci(diffs)
            paired.append({"model": model, "sample_rate": rate, "design": how, "n": len(diffs), "median_diff_ms": round(med, 3),
                           "ci95_ms": [round(lo, 3), round(hi, 3)], "p99_of_diff_ms": round(pct(diffs, 99), 2),
                           "p50_ms": round(statistics.median(ms[copy]), 2), "p50_plain_ms": round(statistics.median(ms["plain"]), 2)})
    time.sleep(5)  # the last cases reach the shadow worker
    cases = {m: c for m, c in shadow_cases(stack).items() if m.startswith("bench-")}
    lines = ["| model | shadowed at | pairing | n | p50 ms (no shadow) | p50 ms | median paired difference [95 % CI] | p99 of differences |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['sample_rate']:.0%} | {p['design']} | {p['n']} | {p['p50_plain_ms']:.2f} | {p['p50_ms']:.2f} | {p['median_diff_ms']:+.3f} ms "
              f"[{p['ci95_ms'][0]:+.3f}, {p['ci95_ms'][1]:+.3f}] | {p['p99_of_diff_ms']:+.2f} ms |" for p in paired]
    report = "\n".join(lines)
    print(f"\nShadow deployment's cost to the primary ({cpu_model()}), {rounds} pairs per row through Nginx:\n{report}\n")
    print("shadow cases by outcome:", json.dumps(cases, indent=1))
    save("shadow", rows, {"rounds": rounds, "paired": paired, "shadow_cases": cases,
                          "method": "default rate: interleaved per request, shuffled; 100 %: alternating blocks (BLOCK requests, pause after each), request j paired with request j of the adjacent block; lean HTTP/1.1 client through Nginx"})
    with (RESULTS / "shadow.md").open("a") as f:
        f.write(f"\n## Paired cost to the primary\n\n{report}\n\nShadow cases by outcome (API): `{json.dumps(cases)}`\n")

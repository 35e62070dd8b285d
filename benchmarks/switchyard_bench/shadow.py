"""Shadow deployment's cost to the primary (docs/shadow.md): the same request to three copies of a
model, through Nginx with the lean HTTP/1.1 client: without a shadow, shadowed at the catalog's
default sample rate (5 %), and shadowed at 100 %. Every round sends one request to each copy in a
shuffled order; the differences to the copy without a shadow are paired per round (median,
bootstrap 95 % CI, p99 of the differences). Vision (V2 REST, one JPEG; candidate int8 on Triton)
and recsys (``/v1/recommendations``; candidate the second ranker version).

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


async def _rounds(stack: Stack, reqs: dict[str, tuple[str, bytes, dict[str, str]]], rounds: int) -> dict[str, list[float]]:
    client = Http1Client.for_url(stack.ingress, timeout_s=30)
    ms: dict[str, list[float]] = {c: [] for c in reqs}
    order = list(reqs)
    try:
        for i in range(rounds + 20):  # 20 rounds of warm-up, not kept
            random.shuffle(order)
            for copy in order:
                path, body, headers = reqs[copy]
                t0 = time.perf_counter()
                r = await client.request("POST", path, body, headers)
                took = (time.perf_counter() - t0) * 1000
                assert r.status == 200, (copy, r.status, r.body[:200])
                if i >= 20:
                    ms[copy].append(took)
    finally:
        await client.close()
    return ms


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
        t0 = time.perf_counter()
        ms = asyncio.run(_rounds(stack, requests_of(model, stack.dev_key), rounds))
        seconds = time.perf_counter() - t0
        base = f"{model}, no shadow"
        for copy, rate in COPIES.items():
            label = base if rate is None else f"{model}, shadowed at {rate:.0%}"
            rows.append(summarize(label, ms[copy], seconds, None if rate is None else base))
            if rate is not None:
                diffs = [a - b for a, b in zip(ms[copy], ms["plain"], strict=True)]
                med, lo, hi = median_ci(diffs)
                paired.append({"model": model, "sample_rate": rate, "median_diff_ms": round(med, 3), "ci95_ms": [round(lo, 3), round(hi, 3)],
                               "p99_of_diff_ms": round(pct(diffs, 99), 2), "p50_ms": round(statistics.median(ms[copy]), 2),
                               "p50_plain_ms": round(statistics.median(ms["plain"]), 2)})
    time.sleep(5)  # the last cases reach the shadow worker
    cases = {m: c for m, c in shadow_cases(stack).items() if m.startswith("bench-")}
    lines = ["| model | shadowed at | p50 ms (no shadow) | p50 ms | median paired difference [95 % CI] | p99 of differences |", "|---|---|---|---|---|---|"]
    lines += [f"| {p['model']} | {p['sample_rate']:.0%} | {p['p50_plain_ms']:.2f} | {p['p50_ms']:.2f} | {p['median_diff_ms']:+.3f} ms "
              f"[{p['ci95_ms'][0]:+.3f}, {p['ci95_ms'][1]:+.3f}] | {p['p99_of_diff_ms']:+.2f} ms |" for p in paired]
    report = "\n".join(lines)
    print(f"\nShadow deployment's cost to the primary ({cpu_model()}), {rounds} interleaved rounds through Nginx:\n{report}\n")
    print("shadow cases by outcome:", json.dumps(cases, indent=1))
    save("shadow", rows, {"rounds": rounds, "paired": paired, "shadow_cases": cases,
                          "method": "interleaved per round, shuffled; paired differences to the copy without a shadow; lean HTTP/1.1 client through Nginx"})
    with (RESULTS / "shadow.md").open("a") as f:
        f.write(f"\n## Paired cost to the primary\n\n{report}\n\nShadow cases by outcome (API): `{json.dumps(cases)}`\n")

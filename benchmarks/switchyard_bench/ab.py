"""Before/after: the platform's own code at a baseline git revision against the working tree, side
by side on one stack, paired request by request.

The stack (engines, Triton, Temporal, workers, API) runs the working tree. Next to it the benchmark
starts the baseline revision's API, LLM worker and vision worker (`git archive` of their sources,
same environment, own ports, own database and Temporal namespace, the same Temporal server, Redis,
Triton and engines). Each round sends one request to each API in
random order, so both see the same machine state; the cost of the change is the per-round
difference (after − before): its median and a bootstrap 95 % confidence interval. Medians of
separate batches drift more than the effects measured here.

Probes (API ports directly, no Nginx: the ingress is not part of the change):
- vision-classify over V2 REST (binary JPEG in, JSON out) and V2 gRPC, each through API → worker → Triton;
- an OpenAI chat completion on llama.cpp through the durable lane: streamed time to first token, and
  non-streamed ``max_tokens=1`` total time, each API with its own revision's LLM worker;
- job submission (``POST /v1/jobs`` until its 202).
"""

from __future__ import annotations

import asyncio
import json
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from switchyard.common.db.store import make_engine
from switchyard.common.keys import LISTED_PREFIX, hash_key
from switchyard.devstack.client import llm_job
from switchyard.devstack.keys import DEV_SCOPES, DEV_TENANT
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import Proc, free_port, http_ready
from switchyard.devstack.stack import LLM_MODEL, Stack, find_temporal, fresh_database
from switchyard_bench.stats import RESULTS, cpu_model, first_token_ms, median_ci, pct
from switchyard_bench.vision import v2_grpc, v2_http

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("libs/common", "apps/api", "apps/worker-llm", "apps/worker-vision")
CATALOG = "infra/catalog/models.yaml"  # the baseline reads its own catalog (the schema may have changed)
Probe = Callable[[int], float]  # round number → milliseconds


def baseline_tree(rev: str) -> Path:
    """The baseline revision's sources, unpacked into a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix=f"switchyard-ab-{rev[:12]}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *SOURCE_DIRS, CATALOG], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


def _pythonpath(env: dict[str, str], tree: Path) -> str:
    """The environment's PYTHONPATH with this repository's source folders swapped for ``tree``'s."""
    swap = {str(ROOT / d): str(tree / d) for d in SOURCE_DIRS}
    return ":".join(swap.get(p, p) for p in env["PYTHONPATH"].split(":"))


async def _share_dev_key(dsn: str, stack: Stack) -> None:
    """The stack's development key, valid in the baseline's database too (a baseline from before
    keys has no table and ignores the header): both APIs get the same requests."""
    engine = make_engine(dsn)
    try:
        async with engine.begin() as conn:
            if (await conn.execute(text("select to_regclass('api_keys')"))).scalar() is None:
                return
            await conn.execute(
                text("insert into api_keys (id, tenant, name, prefix, key_hash, scopes, tier) "
                     "values (:id, :tenant, 'benchmark', :prefix, :hash, cast(:scopes as jsonb), 'normal') on conflict (key_hash) do nothing"),
                {"id": uuid.uuid4(), "tenant": DEV_TENANT, "prefix": stack.dev_key[:LISTED_PREFIX], "hash": hash_key(stack.pepper, stack.dev_key),
                 "scopes": json.dumps(list(DEV_SCOPES))},
            )
    finally:
        await engine.dispose()


def start_baseline(stack: Stack, tree: Path) -> dict[str, int]:
    """The baseline's API, LLM worker and vision worker, configured like the stack's own but with
    their own database (migrated by their own code: the schema may differ) and their own Temporal
    namespace (so that each API's jobs run on its own revision's workers); their ports."""
    ports = {"api": free_port(), "api_grpc": free_port(), "vision_http": free_port(), "vision_grpc": free_port()}
    namespace = "baseline"
    subprocess.run([find_temporal(), "operator", "namespace", "create", "--namespace", namespace, "--address", f"127.0.0.1:{stack.cfg.temporal_port}"],
                   check=True, capture_output=True)
    dsn = make_url(stack.procs["api"].env["SWITCHYARD_POSTGRES_DSN"])
    dsn = dsn.set(database=f"{dsn.database}_base_{tree.name.split('-')[2]}")

    def env_of(proc: str, **extra: str) -> dict[str, str]:
        env = stack.procs[proc].env
        return {**env, "PYTHONPATH": _pythonpath(env, tree), "SWITCHYARD_CATALOG": str(tree / CATALOG), "SWITCHYARD_TEMPORAL_NAMESPACE": namespace,
                "SWITCHYARD_POSTGRES_DSN": dsn.render_as_string(hide_password=False),
                # The stack's processes hold their metrics ports; the baseline's serve none (older revisions ignore these).
                "SWITCHYARD_METRICS_PORT": "0", "SWITCHYARD_TEMPORAL_METRICS_PORT": "0", **extra}

    api_env = env_of("api", SWITCHYARD_API_PORT=str(ports["api"]), SWITCHYARD_GRPC_PORT=str(ports["api_grpc"]),
                     SWITCHYARD_V2_UPSTREAMS=json.dumps({"vision": {"http": f"http://127.0.0.1:{ports['vision_http']}"}}))
    fresh_database(dsn.render_as_string(hide_password=False), stack.cfg.redis_url)  # nothing left by an earlier run
    subprocess.run([sys.executable, "-m", "switchyard.common.db.migrate"], env=api_env, check=True)
    asyncio.run(_share_dev_key(dsn.render_as_string(hide_password=False), stack))
    logs = stack.cfg.state_dir / "logs"
    llm = Proc("baseline-worker-llm", [sys.executable, "-m", "switchyard.worker_llm"], env_of("worker-llm"), logs / "baseline-worker-llm.log", lambda: False)
    llm.ready = llm.log_contains("worker started")
    vision = Proc("baseline-worker-vision", [sys.executable, "-m", "switchyard.worker_vision"],
                  env_of("worker-vision", SWITCHYARD_VISION_HTTP_PORT=str(ports["vision_http"]), SWITCHYARD_VISION_GRPC_PORT=str(ports["vision_grpc"])),
                  logs / "baseline-worker-vision.log", http_ready(f"http://127.0.0.1:{ports['vision_http']}/v2/health/ready"), ready_timeout_s=120)
    api = Proc("baseline-api", [sys.executable, "-m", "switchyard.api"], api_env, logs / "baseline-api.log", http_ready(f"http://127.0.0.1:{ports['api']}/healthz"))
    for proc in (llm, vision, api):
        stack.procs[proc.name] = proc
        proc.start()
        proc.wait_ready()
    return ports


def timed(call: Callable[[], list[str]]) -> Probe:
    def probe(_: int) -> float:
        t0 = time.perf_counter()
        labels = call()
        ms = (time.perf_counter() - t0) * 1000
        assert labels[0] == "palace", labels
        return ms

    return probe


def _chat(i: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    # A fresh nonce per request: no prompt-cache hits.
    return {"model": LLM_MODEL, "messages": [{"role": "user", "content": f"[{uuid.uuid4().hex[:12]}] Say something about number {i}."}],
            "max_tokens": max_tokens, "stream": stream}


def ttft(http: httpx.Client) -> Probe:
    def probe(i: int) -> float:
        return first_token_ms(http, "/v1/chat/completions", _chat(i, 8, True))

    return probe


def one_token(http: httpx.Client) -> Probe:
    def probe(i: int) -> float:
        t0 = time.perf_counter()
        r = http.post("/v1/chat/completions", json=_chat(i, 1, False))
        ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200, r.text[:200]
        return ms

    return probe


def submit(http: httpx.Client) -> Probe:
    """``POST /v1/jobs`` until the 202 (the job itself runs afterwards, on the shared LLM worker)."""
    def probe(i: int) -> float:
        t0 = time.perf_counter()
        r = http.post("/v1/jobs", json=llm_job(f"[{uuid.uuid4().hex[:12]}] Say hi.", max_tokens=1))
        ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 202, r.text[:200]
        return ms

    return probe


def paired(before: Probe, after: Probe, rounds: int, warmup: int) -> tuple[list[float], list[float]]:
    """Both probes once per round, in random order; warm-up rounds are dropped."""
    b: list[float] = []
    a: list[float] = []
    rng = random.Random(7)
    for i in range(warmup + rounds):
        order = [(before, b), (after, a)]
        rng.shuffle(order)
        for probe, out in order:
            ms = probe(i)
            if i >= warmup:
                out.append(ms)
    return b, a


def run(stack: Stack, baseline_rev: str, rounds: int = 300, llm_rounds: int = 80) -> None:
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", baseline_rev], check=True, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *SOURCE_DIRS], check=True, capture_output=True, text=True).stdout)
    ports = start_baseline(stack, baseline_tree(rev))
    jpeg = sample_images()["china"]
    urls = {"before": f"http://127.0.0.1:{ports['api']}", "after": f"http://127.0.0.1:{stack.cfg.api_port}"}
    grpc_urls = {"before": f"127.0.0.1:{ports['api_grpc']}", "after": f"127.0.0.1:{stack.cfg.api_grpc_port}"}
    # The working tree's API wants a key; a baseline from before keys ignores the header.
    clients = {k: httpx.Client(base_url=u, timeout=60, headers={"Authorization": f"Bearer {stack.dev_key}"}) for k, u in urls.items()}
    cases: list[tuple[str, dict[str, Probe], int]] = [
        ("vision-classify, V2 REST via API", {k: timed(v2_http(u.removeprefix("http://"), jpeg, stack.dev_key)) for k, u in urls.items()}, rounds),
        ("vision-classify, V2 gRPC via API", {k: timed(v2_grpc(u, jpeg, stack.dev_key)) for k, u in grpc_urls.items()}, rounds),
        ("chat on llama.cpp, streamed TTFT", {k: ttft(c) for k, c in clients.items()}, llm_rounds),
        ("chat on llama.cpp, max_tokens=1, total", {k: one_token(c) for k, c in clients.items()}, llm_rounds),
        # Last: the jobs it accepts keep the LLM worker busy for a while.
        ("job submission (POST /v1/jobs → 202)", {k: submit(c) for k, c in clients.items()}, rounds),
    ]
    rows = []
    try:
        for name, probes, n in cases:
            b, a = paired(probes["before"], probes["after"], n, warmup=10)
            med, lo, hi = median_ci([x - y for x, y in zip(a, b, strict=True)])
            rows.append({"name": name, "n": n, "before_p50_ms": round(statistics.median(b), 2), "before_p99_ms": round(pct(b, 99), 2),
                         "after_p50_ms": round(statistics.median(a), 2), "after_p99_ms": round(pct(a, 99), 2),
                         "diff_median_ms": round(med, 2), "diff_ci95_ms": [round(lo, 2), round(hi, 2)]})
            print(_row(rows[-1]), flush=True)
    finally:
        for c in clients.values():
            c.close()
    head_lbl = f"{head}{' + uncommitted changes' if dirty else ''}"
    notes = {"before": rev, "after": head_lbl, "machine": f"{cpu_model()}, Python {platform.python_version()}",
             "method": "one stack; the baseline's API, LLM and vision workers (own database and Temporal namespace) run beside the working tree's on the "
                       "same engines; each round sends one "
                       "request to each API in random order; diff = after − before per round, median with bootstrap 95 % CI; concurrency 1; API ports "
                       "directly (no Nginx)."}
    meta = {"bench": "before_after", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **notes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"before_after-{rev}"  # one file per baseline: each change keeps its own record
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{json.dumps(meta, indent=2)}\n\n{_table(rows)}\n")
    print(_table(rows))


def _row(r: dict[str, Any]) -> str:
    lo, hi = r["diff_ci95_ms"]
    return (f"| {r['name']:<40} | {r['n']:>4} | {r['before_p50_ms']:>8.2f} | {r['before_p99_ms']:>8.2f} | {r['after_p50_ms']:>8.2f} | "
            f"{r['after_p99_ms']:>8.2f} | {r['diff_median_ms']:>+7.2f} [{lo:+.2f}, {hi:+.2f}] |")


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"| {'measurement':<40} | {'n':>4} | {'before p50':>8} | {'before p99':>8} | {'after p50':>8} | {'after p99':>8} | "
            f"{'after − before, median [95% CI] ms':>24} |")
    return "\n".join([head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|", *(_row(r) for r in rows)])

"""Recsys realtime lane: ``POST /v1/recommendations`` (k=10, 100 candidates, seen items excluded)
through Nginx + API + recsys worker, vs the worker's own V2 REST port, vs the baseline a team would
build without Switchyard, in the same run.

Baseline: Feast's own feature server (``feast serve`` from the recsys venv, same repo, same Redis)
for the user's online rows, and the same ranker.onnx + item embeddings run in this (the client's)
process, with the item features cached in process as the worker caches them. The model in the
client is the cheapest baseline there is (no extra service hop of its own): Switchyard's overhead
against it is an upper bound. Its answers are checked equal to the worker's before timing.

Concurrency 1: each round sends the same request (a user, 100 candidates) to every target in a
shuffled order; differences are paired per round (median, bootstrap 95 % CI). The targets include
the API without Nginx, so the hops are apart: Nginx (via Nginx − API direct), the API and its hop
to the worker (API direct − worker), and the API's own reported time (X-Switchyard-Overhead-Ms).
Every target is called with the same lean HTTP/1.1 client, and only the exchange is timed. Open loop at 50 and
100 req/s: requests start on schedule whatever the answers (latency from the scheduled start).
Feast's read cost is stated separately: the user's three views with Feast's async API in a recsys
venv process (what the worker does per request), and the feature server's HTTP read (the baseline's).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import uvloop

from switchyard.common.contracts import RecommendationQuery
from switchyard.common.http1 import Http1Client
from switchyard.common.recsys import from_v2_json, v2_json
from switchyard.common.request_log import OVERHEAD_HEADER
from switchyard.devstack.models import cache_dir
from switchyard.devstack.procs import free_port
from switchyard.devstack.stack import Stack
from switchyard_bench.stats import RESULTS, cpu_model, median_ci, pct, started_server
from switchyard_bench.vision import lean_open_loop

ROUNDS = 400
RATES_RPS = (50, 100, 200, 400)
RATE_SECONDS = 15
K, N_CANDIDATES = 10, 100
MODEL = "recsys-rank"
FEAST_REPO = Path(__file__).resolve().parents[2] / "infra" / "feast"
USER_VIEWS = ["user_features:events_7d", "user_features:events_30d", "user_features:category_affinity", "user_features:top_category",
              "user_embedding:embedding", "user_history:recent_items"]
ITEM_FEATURES = ["category", "age_days", "pop_1d", "pop_7d", "pop_30d"]
Ids = list[int]
JSON = {"Content-Type": "application/json"}


def queries(n: int, n_users: int, popular: list[int], seed: int = 13) -> list[RecommendationQuery]:
    """``n`` requests: known users at random, 100 candidates drawn from the 1,000 most popular items."""
    rng = np.random.default_rng(seed)
    return [RecommendationQuery(user_id=int(rng.integers(n_users)), k=K, candidates=[int(c) for c in rng.choice(popular[:1000], N_CANDIDATES, replace=False)])
            for _ in range(n)]


class Baseline:
    """No Switchyard: Feast's feature server for the user's rows, the model in this process."""

    def __init__(self, url: str, models: Path) -> None:
        self.url = url
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.ranker = ort.InferenceSession(str(models / "ranker.onnx"), opts, providers=["CPUExecutionProvider"])
        self.columns = [f["name"] for f in json.loads((models / "training_report.json").read_text())["ranker"]["features"]]
        self.embeddings = np.load(models / "item_embeddings.npy").astype(np.float32)
        self.http = httpx.Client(base_url=url, timeout=30)
        self.items = self._item_table(len(self.embeddings))
        self.feast_ms: list[float] = []

    def _item_table(self, n_items: int, chunk: int = 1000) -> dict[str, np.ndarray[Any, Any]]:
        """Every item's features, read once (they change when Feast materializes, not per request)."""
        cols: dict[str, list[Any]] = {f: [] for f in ITEM_FEATURES}
        for lo in range(0, n_items, chunk):
            got = self._read([f"item_features:{f}" for f in ITEM_FEATURES], "item_id", list(range(lo, min(n_items, lo + chunk))))
            for f in ITEM_FEATURES:
                cols[f].extend(got[f])
        return {f: np.array([-1 if v is None and f == "category" else (v or 0) for v in cols[f]], dtype=np.int64 if f == "category" else np.float32)
                for f in ITEM_FEATURES}

    def _read(self, features: list[str], key: str, ids: list[int]) -> dict[str, list[Any]]:
        r = self.http.post("/get-online-features", json={"features": features, "entities": {key: ids}})
        r.raise_for_status()
        return self.columns_of(r.json())

    @staticmethod
    def columns_of(body: dict[str, Any]) -> dict[str, list[Any]]:
        """The feature server's answer as columns by feature name (values None where it has no row)."""
        names = body["metadata"]["feature_names"]
        return {name.split("__")[-1].split(":")[-1]: [v if s == "PRESENT" else None for v, s in zip(res["values"], res["statuses"], strict=True)]
                for name, res in zip(names, body["results"], strict=True)}

    def user_body(self, user_id: int) -> dict[str, Any]:
        return {"features": USER_VIEWS, "entities": {"user_id": [user_id]}}

    def rank(self, q: RecommendationQuery, user: dict[str, list[Any]]) -> Ids:
        """What the worker's features → ranker → top-k steps do, for a known user and given candidates."""
        assert q.candidates is not None and user["embedding"][0] is not None, "the baseline serves known users with candidates"
        cands = np.array(q.candidates, dtype=np.int64)
        seen = np.asarray(user["recent_items"][0] or [], dtype=np.int64)
        if q.exclude_seen and seen.size:
            cands = cands[~np.isin(cands, seen)]
        u = np.asarray(user["embedding"][0], dtype=np.float32)
        aff = np.asarray(user["category_affinity"][0], dtype=np.float32)
        cat = self.items["category"][cands]
        cols = {"retrieval_score": self.embeddings[cands] @ u, "item_pop_1d": self.items["pop_1d"][cands], "item_pop_7d": self.items["pop_7d"][cands],
                "item_pop_30d": self.items["pop_30d"][cands], "item_age_days": self.items["age_days"][cands], "item_category": cat,
                "user_category_affinity": aff[cat], "user_top_category_match": cat == user["top_category"][0],
                "user_events_7d": np.full(len(cands), user["events_7d"][0]), "user_events_30d": np.full(len(cands), user["events_30d"][0])}
        x = np.column_stack([np.asarray(cols[c], dtype=np.float32) for c in self.columns])
        scores = self.ranker.run(["score"], {"features": x})[0].reshape(-1)
        return [int(i) for i in cands[np.argsort(-scores, kind="stable")[: q.k]]]

    async def call_async(self, http: Http1Client, q: RecommendationQuery) -> Ids:
        t0 = time.perf_counter()
        r = await http.request("POST", "/get-online-features", json.dumps(self.user_body(q.user_id)).encode(), JSON)
        self.feast_ms.append((time.perf_counter() - t0) * 1000)
        assert r.status == 200, r.body[:200]
        return self.rank(q, self.columns_of(json.loads(r.body)))


# A probe sends one round's request and returns the ms of its HTTP exchange (the baseline's: its whole
# work), the answer's item ids (checked equal across probes, outside the timing) and, for the API,
# the time it reports as its own (X-Switchyard-Overhead-Ms: its time minus the worker's).
Probe = Callable[[RecommendationQuery], Awaitable[tuple[float, Ids, float | None]]]


def v2_probe(http: Http1Client, headers: dict[str, str]) -> Probe:
    async def call(q: RecommendationQuery) -> tuple[float, Ids, float | None]:
        body = json.dumps(v2_json(q)).encode()
        t0 = time.perf_counter()
        r = await http.request("POST", f"/v2/models/{MODEL}/infer", body, headers)
        ms = (time.perf_counter() - t0) * 1000
        assert r.status == 200, r.body[:200]
        return ms, [i.item_id for i in from_v2_json(q.user_id, json.loads(r.body)).items], _overhead(r.headers)

    return call


def v1_probe(http: Http1Client, headers: dict[str, str]) -> Probe:
    async def call(q: RecommendationQuery) -> tuple[float, Ids, float | None]:
        body = q.model_dump_json().encode()
        t0 = time.perf_counter()
        r = await http.request("POST", "/v1/recommendations", body, headers)
        ms = (time.perf_counter() - t0) * 1000
        assert r.status == 200, r.body[:200]
        return ms, [i["item_id"] for i in json.loads(r.body)["items"]], _overhead(r.headers)

    return call


def baseline_probe(baseline: Baseline, http: Http1Client) -> Probe:
    async def call(q: RecommendationQuery) -> tuple[float, Ids, float | None]:
        t0 = time.perf_counter()
        ids = await baseline.call_async(http, q)
        return (time.perf_counter() - t0) * 1000, ids, None

    return call


def _overhead(headers: dict[str, str]) -> float | None:
    v = headers.get(OVERHEAD_HEADER.lower())
    return float(v) if v is not None else None


async def interleaved(probes: dict[str, Probe], qs: list[RecommendationQuery], warmup: int = 30) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each round: the round's request to every probe, in a fresh random order; ms per probe and
    round, and the API's own reported ms where it reports it. The first rounds check that every
    probe gives the same answer."""
    for q in qs[:20]:
        answers = {name: (await fn(q))[1] for name, fn in probes.items()}
        assert len({tuple(a) for a in answers.values()}) == 1, f"user {q.user_id}: the targets disagree: {answers}"
    for q in qs[20:warmup]:
        for fn in probes.values():
            await fn(q)
    ms: dict[str, list[float]] = {name: [] for name in probes}
    own: dict[str, list[float]] = {name: [] for name in probes}
    order = list(probes)
    for q in qs[warmup:]:
        random.shuffle(order)
        for name in order:
            t, _, reported = await probes[name](q)
            ms[name].append(t)
            if reported is not None:
                own[name].append(reported)
    return ms, {k: v for k, v in own.items() if v}


Send = Callable[[Http1Client, RecommendationQuery], Awaitable[Any]]


def rate(send: Send, base_url: str, qs: list[RecommendationQuery], rps: int) -> tuple[list[float], float, int]:
    """Open loop at ``rps`` over the queries in turn, bodies encoded in advance; (latencies ms, seconds, errors)."""
    it = iter(qs * (1 + rps * RATE_SECONDS // len(qs)))
    return lean_open_loop(base_url, lambda http: send(http, next(it)), rps, RATE_SECONDS)


def _poster(path: str, encode: Callable[[RecommendationQuery], bytes], headers: dict[str, str]) -> Send:
    async def send(http: Http1Client, q: RecommendationQuery) -> None:
        r = await http.request("POST", path, encode(q), headers)
        assert r.status == 200, r.body[:200]

    return send


# Feast's async read of one user's three views, as the worker does it, timed in the recsys venv.
_FEAST_READ = """
import asyncio, json, sys, time
from feast import FeatureStore
features, n, n_users = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
async def main():
    store = FeatureStore(repo_path=sys.argv[4])
    await store.initialize()
    ms = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        await store.get_online_features_async(features=features, entity_rows=[{"user_id": (i * 7919) % n_users}])
        ms.append((time.perf_counter() - t0) * 1000)
    await store.close()
    print(json.dumps(ms[20:]))
asyncio.run(main())
"""


def feast_read_ms(env: dict[str, str], n_users: int, n: int = 300) -> list[float]:
    python = cache_dir() / "recsys" / "venv" / "bin" / "python"
    out = subprocess.run([str(python), "-O", "-c", _FEAST_READ, json.dumps(USER_VIEWS), str(n), str(n_users), str(FEAST_REPO)], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def start_feature_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    feast = cache_dir() / "recsys" / "venv" / "bin" / "feast"
    proc = subprocess.Popen([str(feast), "-c", str(FEAST_REPO), "serve", "-h", "127.0.0.1", "-p", str(port), "--workers", "1", "--no-access-log",
                             # gunicorn restarts a worker after --max-requests (default 1,000): not in the middle of a measurement
                             "--max-requests", "100000000"],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    return started_server("feast serve", proc, f"{url}/health", log, 120), url


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(pct(ms, 99), 2)}


def quality(models: Path) -> list[dict[str, Any]]:
    """NDCG@10 and recall@50 on the held-out week, from the training report (build-support/train_recsys.py)."""
    ev = json.loads((models / "training_report.json").read_text())["evaluation"]
    rows = [{"ranking": name, "ndcg@10": r["ndcg@10"], "recall@50": r["recall@50"]} for name, r in ev["results"].items()]
    lift = ev["relative_lift_over_best_popularity"]
    rows.append({"ranking": "lift of two_stage over the better popularity", "ndcg@10": f"{lift['ndcg@10']:+.0%}", "recall@50": f"{lift['recall@50']:+.0%}"})
    return rows


def run(stack: Stack) -> None:
    models = cache_dir() / "recsys" / "models"
    popular = [int(p["item_id"]) if isinstance(p, dict) else int(p) for p in json.loads((models / "popular_items.json").read_text())]
    n_users = int(json.loads((models / "training_report.json").read_text())["data"]["users"])
    env = {k: v for k, v in stack.procs["worker-recsys"].env.items() if k != "PYTHONPATH"}
    cpu = cpu_model()
    print(f"host CPU: {cpu}")

    feast_inproc = feast_read_ms(env, n_users)
    server, feast_url = start_feature_server(env, stack.cfg.state_dir / "logs" / "feast-serve.log")
    try:
        baseline = Baseline(feast_url, models)
        auth = {**JSON, "Authorization": f"Bearer {stack.dev_key}"}
        api_direct = f"http://127.0.0.1:{stack.cfg.api_port}"
        worker_url = f"http://127.0.0.1:{stack.cfg.recsys_http_port}"
        names = {"api": "via Nginx + API (/v1/recommendations)", "v2": "via Nginx + API (V2 REST /v2/models/recsys-rank/infer)",
                 "api_direct": "API direct, no Nginx (/v1/recommendations)", "v2_direct": "API direct, no Nginx (V2 REST)",
                 "worker": "recsys worker direct (V2 REST)", "baseline": "baseline: feast serve + model in client"}
        qs = queries(ROUNDS + 30, n_users, popular)

        async def conc1() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
            clients = {url: Http1Client.for_url(url, timeout_s=30) for url in (stack.ingress, api_direct, worker_url, feast_url)}
            probes = {names["api"]: v1_probe(clients[stack.ingress], auth), names["v2"]: v2_probe(clients[stack.ingress], auth),
                      names["api_direct"]: v1_probe(clients[api_direct], auth), names["v2_direct"]: v2_probe(clients[api_direct], auth),
                      names["worker"]: v2_probe(clients[worker_url], JSON), names["baseline"]: baseline_probe(baseline, clients[feast_url])}
            try:
                return await interleaved(probes, qs)
            finally:
                for c in clients.values():
                    await c.close()

        ms, own = uvloop.run(conc1())
        rows: list[dict[str, Any]] = [{"name": f"{name}, conc 1", "n": len(v), **summary(v)} for name, v in ms.items()]
        rows += [{"name": f"the API's own time (X-Switchyard-Overhead-Ms) in: {name}", "n": len(v), **summary(v)} for name, v in own.items()]
        diffs = []
        for a, b in (("api", "worker"), ("v2", "worker"), ("api", "api_direct"), ("v2", "v2_direct"), ("api_direct", "worker"), ("v2_direct", "worker"),
                     ("api", "v2"), ("api", "baseline"), ("v2", "baseline"), ("baseline", "worker")):
            med, lo, hi = median_ci([x - y for x, y in zip(ms[names[a]], ms[names[b]], strict=True)])
            diffs.append({"name": f"{a} − {b}", "median_ms": round(med, 2), "ci95_ms": [round(lo, 2), round(hi, 2)]})
        feast = [{"name": "Feast async read in process (3 user views, 1 user; the worker's read)", "n": len(feast_inproc), **summary(feast_inproc)},
                 {"name": "feast serve HTTP read (same views; inside the baseline's rows)", "n": ROUNDS, **summary(baseline.feast_ms[-ROUNDS:])}]

        async def send_baseline(http: Http1Client, q: RecommendationQuery) -> None:
            await baseline.call_async(http, q)

        v2_body: Callable[[RecommendationQuery], bytes] = lambda q: json.dumps(v2_json(q)).encode()  # noqa: E731
        targets: list[tuple[str, Send, str]] = [
            (names["baseline"], send_baseline, feast_url),
            (names["worker"], _poster(f"/v2/models/{MODEL}/infer", v2_body, JSON), worker_url),
            (names["v2"], _poster(f"/v2/models/{MODEL}/infer", v2_body, auth), stack.ingress),
            (names["api"], _poster("/v1/recommendations", lambda q: q.model_dump_json().encode(), auth), stack.ingress),
        ]
        open_rows = []
        for rps in RATES_RPS:
            for name, send, url in targets:
                lat, secs, errors = rate(send, url, qs, rps)
                open_rows.append({"name": f"{name}, {rps} req/s open loop", "rate": rps, "n": len(lat), "errors": errors, **summary(lat),
                                  "achieved_rps": round(len(lat) / secs, 1), "p99_under_50ms": pct(lat, 99) < 50})
    finally:
        server.terminate()
        server.wait(timeout=30)
    offline = quality(models)
    text = report(cpu, rows, diffs, feast, open_rows, offline)
    print(text)
    meta = {"bench": "recsys", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "request": f"k={K}, {N_CANDIDATES} candidates from the 1,000 most popular items, exclude_seen, random known users", "rounds": ROUNDS,
            "open_loop": f"{RATES_RPS} req/s, {RATE_SECONDS} s each"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recsys.json").write_text(json.dumps({"meta": meta, "conc1": rows, "paired": diffs, "feast_read": feast, "open_loop": open_rows,
                                                     "offline_quality": offline}, indent=2))
    (RESULTS / "recsys.md").write_text(f"# recsys\n\n{json.dumps(meta, indent=2)}\n\n{text}\n")
    print(f"results: {RESULTS / 'recsys.md'}")


def report(cpu: str, rows: list[dict[str, Any]], diffs: list[dict[str, Any]], feast: list[dict[str, Any]], open_rows: list[dict[str, Any]],
           offline: list[dict[str, Any]]) -> str:
    lines = [f"Host CPU: {cpu}", "", "| concurrency 1, interleaved | n | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in rows]
    lines += ["", "| paired difference per round | median ms | 95 % CI (bootstrap) |", "|---|---|---|"]
    lines += [f"| {d['name']} | {d['median_ms']:+.2f} | [{d['ci95_ms'][0]:+.2f}, {d['ci95_ms'][1]:+.2f}] |" for d in diffs]
    lines += ["", "| open loop | n | errors | p50 ms | p99 ms | achieved req/s | p99 < 50 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n']} | {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['achieved_rps']} | {'yes' if r['p99_under_50ms'] else 'NO'} |"
              for r in open_rows]
    lines += ["", "| Feast read cost | n | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in feast]
    lines += ["", "| offline quality (held-out week) | NDCG@10 | recall@50 |", "|---|---|---|"]
    lines += [f"| {r['ranking']} | {r['ndcg@10']} | {r['recall@50']} |" for r in offline] or ["| (training_report.json: no evaluation found) | | |"]
    return "\n".join(lines)

"""A real Prometheus (the Debian package) scrapes the running test stack with infra/prometheus's
configuration (rules included) and the stack's file_sd targets, every second: a request made here
comes back from a PromQL query, every target is up, every dashboard panel query returns series
(the ones that cannot here are listed with the reason), the names each process exports are
docs/metrics.md's, and no label value is an id."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from conftest import SHADOWED, eventually  # pants: no-infer-dep

from switchyard.devstack import dashboards, prometheus
from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.metrics_contract import contract_metrics, unknown_metrics
from switchyard.devstack.models import sample_images
from switchyard.devstack.procs import free_port
from switchyard.devstack.stack import EMBED_MODEL, LLM_MODEL, Stack, find_repo_file

V2_MODEL = "vision-classify"
# The scrape jobs of infra/prometheus/prometheus.yml the test stack has targets for (no GPU here: no dcgm).
JOBS = {"api", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow", "temporal-sdk", "engines", "triton", "temporal-server"}

# Panel queries that return no series on this stack, and why (each is checked on synthetic series
# by the promtool unit tests instead, or needs what the test stack does not run).
NO_SERIES_HERE: dict[str, str] = {
    "DCGM_FI_DEV_": "dcgm-exporter needs an NVIDIA GPU and driver (none on the build machines)",
    "switchyard_gpu_memory": "per-GPU NVML series exist only with a GPU (switchyard_gpu_present is 0 here)",
    "switchyard_gpu_temperature": "per-GPU NVML series exist only with a GPU",
    "switchyard_gpu_utilization": "per-GPU NVML series exist only with a GPU",
    "vllm:": "vLLM runs in the test stack only when build-support/setup-vllm.sh installed it and the stack enables it",
    "sglang:": "SGLang needs CUDA; the fake serves only a few of its names",
    "dcgm": "dcgm-exporter needs an NVIDIA GPU and driver (recording rule over DCGM_FI_DEV_*)",
    "switchyard_request_errors": "server errors (5xx): none on a healthy stack; the alert unit tests cover them on synthetic series",
    "_failed_total": "Temporal's failure counters appear after a failure; this module makes none",
    "temporal_request_failure_total": "appears after a failed Temporal request",
    "ALERTS": "no alert is firing on a healthy stack",
}
# Label values that would be ids: a UUID, or a long run of hex digits (job, request or key ids).
ID_LIKE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|[0-9a-f]{16,}", re.I)


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)
        return r.json()["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float:
        """The value of a query that returns at most one series (0 when none)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else 0.0

    def targets(self) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/targets", params={"state": "active"})
        r.raise_for_status()
        return r.json()["data"]["activeTargets"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prom(stack: Stack) -> Iterator[Prom]:
    binary = prometheus.find_prometheus()
    if binary is None:
        pytest.fail(f"Prometheus not found: {prometheus.SETUP_HINT}")
    config = prometheus.render_config(stack.prometheus_dir, find_repo_file("infra/prometheus/prometheus.yml"), scrape_interval="1s")
    proc = prometheus.prometheus_proc(binary, config, free_port(), stack.cfg.state_dir / "logs" / "prometheus.log")
    proc.start()
    try:
        proc.wait_ready()
        port = re.search(r"127\.0\.0\.1:(\d+)", " ".join(proc.cmd))
        assert port
        p = Prom(f"http://127.0.0.1:{port.group(1)}")
        eventually(lambda: all(t["health"] == "up" for t in p.targets()) and {t["labels"]["job"] for t in p.targets()} >= JOBS,
                   "every target scraped once", timeout_s=60)
        yield p
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def traffic(stack: Stack, client: JobClient, oai: openai.OpenAI, auth: dict[str, str]) -> None:
    """One of each: an LLM job, a vision job, a recsys job, a V2 infer (realtime lane) and one of a
    shadowed model (compared), a recommendation, an OpenAI chat completion, an embedding, a client
    error (an unknown job: 404)."""
    job, _ = client.run(llm_job("Say hi.", max_tokens=4))
    assert job["status"] == "succeeded", job
    image = sample_images()["china"]
    job, _ = client.run({"domain": "vision", "model": V2_MODEL, "input": {"images": [base64.b64encode(image).decode()]}})
    assert job["status"] == "succeeded", job
    job, _ = client.run({"domain": "recsys", "model": "recsys-rank", "input": {"users": [1, 2], "k": 5}})
    assert job["status"] == "succeeded", job
    assert client.http.post("/v1/recommendations", json={"user_id": 3, "k": 5}).status_code == 200
    v2 = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    v2.infer(V2_MODEL, [inp], headers=dict(auth))
    # A shadowed model's request (conftest.py): the API mirrors it, worker-shadow compares it.
    v2.infer(SHADOWED["vision"], [inp], headers=dict(auth))
    v2.close()
    eventually(lambda: "switchyard_shadow_latency_delta_seconds_count" in
               httpx.get(f"http://127.0.0.1:{stack.cfg.worker_shadow_metrics_port}/metrics", timeout=10).text, "the shadow comparison", timeout_s=120)
    oai.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    client.run(llm_job("Say hello.", max_tokens=4))  # the job API: a workflow and its activities (a completion may need none)
    oai.embeddings.create(model=EMBED_MODEL, input="a lighthouse")
    assert client.http.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def test_every_target_is_up(prom: Prom) -> None:
    targets = prom.targets()
    assert {t["labels"]["job"] for t in targets} >= JOBS
    assert [t["scrapeUrl"] for t in targets if t["health"] != "up"] == []
    # Engine targets carry the catalog's model and endpoint labels, never a URL.
    assert all({"model", "endpoint"} <= t["labels"].keys() for t in targets if t["labels"]["job"] == "engines")


def test_a_request_comes_back_from_a_query(prom: Prom, client: JobClient, oai: openai.OpenAI, auth: dict[str, str], stack: Stack) -> None:
    def snapshot() -> dict[str, float]:
        return {name: prom.value(expr) for name, expr in queries.items()}

    queries = {
        "jobs_finished": f'sum(switchyard_jobs_finished_total{{domain="llm", model="{LLM_MODEL}", outcome="succeeded"}})',
        "queue_time": 'sum(switchyard_queue_time_seconds_count{domain="llm"})',
        "completion_tokens": f'sum(switchyard_tokens_total{{model="{LLM_MODEL}", kind="completion"}})',
        "engine_calls": f'sum(switchyard_engine_requests_total{{model="{LLM_MODEL}", endpoint="llamacpp-0", outcome="ok"}})',
        "prompt_tokens_embed": f'sum(switchyard_tokens_total{{model="{EMBED_MODEL}", kind="prompt"}})',
        "images": f'sum(switchyard_items_total{{domain="vision", model="{V2_MODEL}"}})',
        "sdk_activities": 'sum(temporal_activity_task_received_total{activity_type="llm.generate"})',
        # helper "reqlog"'s request metrics (the API): the OpenAI completion and the V2 infer
        "openai_requests": f'sum(switchyard_requests_total{{family="openai", model="{LLM_MODEL}", status="200"}})',
        "v2_requests": f'sum(switchyard_requests_total{{family="v2_rest", model="{V2_MODEL}", status="200"}})',
    }
    before = snapshot()
    oai.chat.completions.create(model=LLM_MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    client.run(llm_job("Say hello.", max_tokens=4))  # the job API: a workflow and its activities (a completion may need none)
    oai.embeddings.create(model=EMBED_MODEL, input="a lighthouse")
    image = sample_images()["flower"]
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=object), binary_data=True)
    v2 = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    v2.infer(V2_MODEL, [inp], headers=dict(auth))
    v2.close()
    grew = {"jobs_finished": 2, "queue_time": 2, "engine_calls": 2, "images": 1, "sdk_activities": 1, "openai_requests": 1, "v2_requests": 1}

    def arrived() -> bool:
        now = snapshot()
        return all(now[k] >= before[k] + n for k, n in grew.items()) and now["completion_tokens"] > before["completion_tokens"] \
            and now["prompt_tokens_embed"] > before["prompt_tokens_embed"]

    try:
        eventually(arrived, "the requests' metrics in Prometheus", timeout_s=30)
    except AssertionError:
        pytest.fail(f"before {before}, now {snapshot()}")


def test_every_dashboard_panel_query_parses_and_returns_series(prom: Prom, traffic: None) -> None:
    time.sleep(3)  # a few scrapes after the traffic: rates need two samples
    empty, allowed = [], []
    for name in dashboards.DASHBOARDS:
        for title, expr in dashboards.panel_queries(dashboards.render_dashboard(name)):
            expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "1h")
            if prom.query(expr):
                continue
            reason = next((why for key, why in NO_SERIES_HERE.items() if key in expr), None)
            (allowed if reason else empty).append(f"{name} / {title}: {expr}")
    assert empty == [], "panel queries without series (and without a reason in NO_SERIES_HERE):\n" + "\n".join(empty)


def test_each_process_exports_the_contract_names(prom: Prom, traffic: None) -> None:
    contract = contract_metrics(find_repo_file("docs/metrics.md").read_text())
    exported: dict[str, set[str]] = {}
    for job in ("api", "worker-llm", "worker-vision", "worker-recsys", "worker-shadow"):
        exported[job] = {s["__name__"] for s in series(prom, f'{{job="{job}"}}') if s["__name__"].startswith("switchyard_")}
        assert unknown_metrics(exported[job], contract) == set(), f"{job} exports names docs/metrics.md does not declare"
    ours = {n for names in exported.values() for n in names}
    # The Temporal SDK exports more than the contract lists (what rules and dashboards read): those
    # must all be there under these names (failure counters appear only after a failure).
    sdk = {re.sub(r"_(bucket|sum|count)$", "", s["__name__"]) for s in series(prom, '{job="temporal-sdk"}')}
    wanted = {n for n in contract if n.startswith("temporal_") and "fail" not in n}
    assert wanted - sdk == set(), "Temporal SDK names the contract lists that no process exports"
    # Schedule-to-start histograms in seconds with the queue-time buckets (the SDK's own start at 0.1 s).
    for name in ("temporal_activity_schedule_to_start_latency_bucket", "temporal_workflow_task_schedule_to_start_latency_bucket"):
        assert prom.query(f'{name}{{le="0.005"}}'), name
    expected = {n for n in contract if n.startswith("switchyard_")} - {
        "switchyard_gpu_memory_used_bytes", "switchyard_gpu_memory_total_bytes", "switchyard_gpu_temperature_celsius",
        "switchyard_gpu_utilization_ratio"}  # per-GPU: only with a GPU (tests/unit/test_gpu.py fills them with a fake NVML)
    exported_bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in ours}
    assert expected - exported_bases == set(), "contract names no process exports (renamed in code?)"
    assert prom.value("max(switchyard_gpu_present)") == 0  # no GPU on this machine, and it says so


def series(prom: Prom, match: str) -> list[dict[str, str]]:
    r = prom.http.get("/api/v1/series", params={"match[]": match})
    r.raise_for_status()
    return r.json()["data"]  # type: ignore[no-any-return]


def test_no_label_value_looks_like_an_id(prom: Prom, traffic: None) -> None:
    bad = [s for s in series(prom, '{__name__=~"switchyard_.+"}') for k, v in s.items() if k not in ("instance",) and ID_LIKE.search(v)]
    assert bad == []
    assert series(prom, '{__name__=~"switchyard_.+"}'), "no switchyard series at all"


def metric_value(page: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on a Prometheus text page whose labels include ``labels``."""
    total = 0.0
    for line in page.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})?\s+(\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_several_api_processes_add_up_on_one_page(stack: Stack, api_key: str, tmp_path: Path) -> None:
    """A second API, two processes (SWITCHYARD_API_WORKERS=2), on the stack's databases: each
    process has its own Temporal SDK page, and one metrics page sums what both counted."""
    ports = {"api": free_port(), "grpc": free_port(), "metrics": free_port()}
    sdk = next(p for p in iter(free_port, 0) if prometheus.port_free(p + 1))
    env = {**stack.procs["api"].env, "SWITCHYARD_API_PORT": str(ports["api"]), "SWITCHYARD_GRPC_PORT": str(ports["grpc"]),
           "SWITCHYARD_METRICS_PORT": str(ports["metrics"]), "SWITCHYARD_TEMPORAL_METRICS_PORT": str(sdk), "SWITCHYARD_API_WORKERS": "2",
           "TMPDIR": str(tmp_path)}  # where the entry point makes its multiprocess directory
    from switchyard.devstack.procs import Proc, http_ready

    api = Proc("api-2procs", list(stack.procs["api"].cmd), env, stack.cfg.state_dir / "logs" / "api-2procs.log", http_ready(f"http://127.0.0.1:{ports['api']}/healthz"))
    api.start()
    try:
        api.wait_ready()
        for port in (sdk, sdk + 1):  # both processes are up: each has its own Temporal Runtime
            eventually(lambda port=port: page_ok(f"http://127.0.0.1:{port}/metrics"), f"the Temporal SDK page on {port}")
        # A new connection per request: the processes share the listening socket and take turns,
        # unevenly; requests go on until both have counted some (a counter file each).
        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['api']}", timeout=60, headers={"Authorization": f"Bearer {api_key}"},
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while n < 10 or (len(counter_writers(tmp_path)) < 2 and n < 300):
                r = c.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": f"lighthouse {n}"})
                assert r.status_code == 200, r.text
                n += 1
        assert len(counter_writers(tmp_path)) == 2, f"after {n} requests only {counter_writers(tmp_path)} counted"
        page = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
        assert metric_value(page, "switchyard_engine_requests_total", model=EMBED_MODEL, endpoint="llamacpp-0", outcome="ok") == n
        # Gauges with multiprocess_mode="max": one series per label set, not one per process.
        assert len([line for line in page.splitlines() if line.startswith('switchyard_task_queue_backlog{domain="llm",priority="3"}')]) == 1
    finally:
        api.stop()
    assert not list(tmp_path.glob("switchyard-api-metrics-*")), "the multiprocess directory is removed when the API stops"


def counter_writers(tmp: Path) -> set[str]:
    """The pids that wrote counters in the API's multiprocess directory (counter_<pid>.db)."""
    return {f.stem.split("_")[-1] for f in tmp.glob("switchyard-api-metrics-*/counter_*.db")}


def page_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False



def test_platform_gauges(prom: Prom) -> None:
    # The LLM worker's probe: llama.cpp answers; the fallback model's first endpoint (port 9) does not.
    eventually(lambda: prom.value(f'max(switchyard_engine_up{{model="{LLM_MODEL}", endpoint="llamacpp-0"}})') == 1
               and prom.value('max(switchyard_engine_up{model="smollm2-with-fallback", endpoint="vllm-0"})') == 0
               and prom.query('switchyard_engine_up{model="smollm2-with-fallback", endpoint="vllm-0"}') != [], "the engine probe")
    # The API's backlog per domain and priority (all 15, each a number), and the V2 breaker, closed.
    assert len(prom.query("switchyard_task_queue_backlog")) == 15
    eventually(lambda: prom.query(f'switchyard_breaker_state{{target="{V2_MODEL}"}}') != [], "the breaker gauge")
    assert prom.value(f'max(switchyard_breaker_state{{target="{V2_MODEL}"}})') == 0

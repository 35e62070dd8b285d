"""Switchyard's Grafana dashboards as code (Grafana 11.6, grafana-foundation-sdk's 11.6 build).

``python -m switchyard.devstack.dashboards`` writes ``infra/grafana/dashboards/*.json`` and the
provisioning files (``infra/grafana/provisioning/``); the JSON is committed and
``tests/unit/test_grafana_dashboards.py`` checks it equals what this module builds, that every
query parses and uses only docs/metrics.md's names, and that it type-checks against Grafana 11.6's
``@grafana/schema``. Edit this file, never the JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

GRAFANA_VERSION: Final = "11.6"
# The provisioned Prometheus data source (provisioning/datasources/switchyard.yml) has this uid.
DATASOURCE_UID: Final = "switchyard-prometheus"
DATASOURCE: Final = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
TAG: Final = "switchyard"
# Realtime SLO and TTFT SLO (the seed's), drawn as thresholds on the latency panels.
REALTIME_SLO_S: Final = 0.05
TTFT_SLO_S: Final = 0.5


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _targets(queries: Sequence[Query]) -> list[Dataquery]:
    return [Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)) for i, q in enumerate(queries)]


def _timeseries(title: str, unit: str, *queries: Query, description: str = "", width: int = 12) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(width)
    if description:
        panel = panel.description(description)
    for t in _targets(queries):
        panel = panel.with_target(t)
    return panel


def _stat(title: str, unit: str, query: Query, description: str = "", width: int = 6) -> Stat:
    panel = Stat().title(title).unit(unit).datasource(DATASOURCE).height(4).span(width).with_target(_targets([query])[0])
    return panel.description(description) if description else panel


def _dashboard(uid: str, title: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .readonly()
    )


# ---- dashboards ----------------------------------------------------------------------------------

SERVER_ERRORS: Final = 'status=~"5..|INTERNAL|UNKNOWN|UNAVAILABLE|DATA_LOSS|DEADLINE_EXCEEDED"'


def api_slos() -> Dashboard:
    return (
        _dashboard("switchyard-api", "Switchyard / API & SLOs", "Requests per route family and model, errors, latency against the SLOs, platform overhead, alerts.")
        .with_row(Row("Overview"))
        .with_panel(_stat("Requests/s", "reqps", _q("sum(family_model:switchyard_requests:rate5m)", "requests/s")))
        .with_panel(_stat("Server errors", "percentunit", _q("sum(family_model:switchyard_request_errors:rate5m) / sum(family_model:switchyard_requests:rate5m)", "errors")))
        .with_panel(_stat("API processes up", "short", _q('sum(up{job="api"})', "up")))
        .with_panel(_stat("Alerts firing", "short", _q('count(ALERTS{alertstate="firing"}) or vector(0)', "alerts")))
        .with_row(Row("Traffic"))
        .with_panel(_timeseries("Requests/s by family", "reqps", _q("sum by (family) (family_model:switchyard_requests:rate5m)", "{{family}}")))
        .with_panel(_timeseries("Requests/s by status", "reqps", _q("sum by (family, status) (rate(switchyard_requests_total[$__rate_interval]))", "{{family}} {{status}}")))
        .with_panel(_timeseries("Server-error ratio", "percentunit", _q("family_model:switchyard_request_errors:ratio_rate5m", "{{family}} {{model}}"),
                                description="5xx and gRPC server codes over all requests; the alert fires over 5%."))
        .with_panel(_timeseries("Client errors/s (4xx)", "reqps", _q('sum by (family, status) (rate(switchyard_requests_total{status=~"4..|INVALID_ARGUMENT|NOT_FOUND|UNAUTHENTICATED|PERMISSION_DENIED|RESOURCE_EXHAUSTED"}[$__rate_interval]))', "{{family}} {{status}}")))
        .with_row(Row("Latency and SLOs"))
        .with_panel(_timeseries("P99 request duration, realtime (SLO 50 ms)", "s",
                                _q('family_model:switchyard_request_duration_seconds:p99_5m{family=~"v2_rest|v2_grpc|recsys"}', "{{family}} {{model}}")))
        .with_panel(_timeseries("P50 / P99 request duration, durable lane", "s",
                                _q('histogram_quantile(0.5, sum by (family, le) (rate(switchyard_request_duration_seconds_bucket{family=~"jobs|openai"}[$__rate_interval])))', "p50 {{family}}"),
                                _q('histogram_quantile(0.99, sum by (family, le) (rate(switchyard_request_duration_seconds_bucket{family=~"jobs|openai"}[$__rate_interval])))', "p99 {{family}}")))
        .with_panel(_timeseries("Realtime requests within 50 ms", "percentunit",
                                _q('sum by (family) (rate(switchyard_request_duration_seconds_bucket{family=~"v2_rest|v2_grpc|recsys",le="0.05"}[$__rate_interval])) / sum by (family) (rate(switchyard_request_duration_seconds_count{family=~"v2_rest|v2_grpc|recsys"}[$__rate_interval]))', "{{family}}")))
        .with_panel(_timeseries("P99 platform overhead", "s", _q("family:switchyard_platform_overhead_seconds:p99_5m", "{{family}}"),
                                description="Time in the platform, not the engine (X-Switchyard-Overhead-Ms)."))
        .with_row(Row("Queues and breakers"))
        .with_panel(_timeseries("Task-queue backlog", "short", _q("domain_priority:switchyard_task_queue_backlog:max", "{{domain}} p{{priority}}")))
        .with_panel(_timeseries("P99 queue time", "s", _q("domain_priority:switchyard_queue_time_seconds:p99_5m", "{{domain}} p{{priority}}")))
        .with_panel(_timeseries("Circuit breakers (0 closed, 1 half-open, 2 open)", "short", _q("max by (target) (switchyard_breaker_state)", "{{target}}")))
        .with_panel(_timeseries("Firing alerts", "short", _q('sum by (alertname) (ALERTS{alertstate="firing"})', "{{alertname}}")))
    )


def llm() -> Dashboard:
    return (
        _dashboard("switchyard-llm", "Switchyard / LLM", "OpenAI routes and LLM jobs: TTFT against the 500 ms SLO, tokens/s, queue time, engine endpoints.")
        .with_row(Row("Requests"))
        .with_panel(_timeseries("Requests/s by model", "reqps", _q('sum by (model) (family_model:switchyard_requests:rate5m{family=~"openai|jobs"})', "{{model}}")))
        .with_panel(_timeseries("Server-error ratio", "percentunit", _q('family_model:switchyard_request_errors:ratio_rate5m{family=~"openai|jobs"}', "{{family}} {{model}}")))
        .with_row(Row("Time to first token (SLO 500 ms)"))
        .with_panel(_timeseries("P99 TTFT", "s", _q("model:switchyard_ttft_seconds:p99_5m", "{{model}}")))
        .with_panel(_timeseries("P50 TTFT", "s", _q("histogram_quantile(0.5, sum by (model, le) (rate(switchyard_ttft_seconds_bucket[$__rate_interval])))", "{{model}}")))
        .with_row(Row("Tokens"))
        .with_panel(_timeseries("Tokens/s", "short", _q("model_kind:switchyard_tokens:rate5m", "{{model}} {{kind}}")))
        .with_panel(_timeseries("Jobs finished/s", "short", _q('sum by (model, outcome) (rate(switchyard_jobs_finished_total{domain="llm"}[$__rate_interval]))', "{{model}} {{outcome}}")))
        .with_row(Row("Queue"))
        .with_panel(_timeseries("Backlog", "short", _q('domain_priority:switchyard_task_queue_backlog:max{domain="llm"}', "p{{priority}}")))
        .with_panel(_timeseries("P99 queue time", "s", _q('domain_priority:switchyard_queue_time_seconds:p99_5m{domain="llm"}', "p{{priority}}")))
        .with_row(Row("Engine endpoints"))
        .with_panel(_timeseries("Endpoint up", "short", _q("max by (model, endpoint) (switchyard_engine_up)", "{{model}} {{endpoint}}")))
        .with_panel(_timeseries("Generations in flight", "short", _q("sum by (model, endpoint) (switchyard_engine_requests_running)", "{{model}} {{endpoint}}")))
        .with_panel(_timeseries("Engine calls/s by outcome", "reqps", _q("sum by (model, endpoint, outcome) (rate(switchyard_engine_requests_total[$__rate_interval]))", "{{model}} {{endpoint}} {{outcome}}"),
                                description="A fallback shows as an error on one endpoint and ok on the next."))
    )


def vision() -> Dashboard:
    return (
        _dashboard("switchyard-vision", "Switchyard / Vision", "KServe V2 realtime lane (REST, gRPC) and vision jobs: latency against the 50 ms SLO, images/s, Triton.")
        .with_row(Row("Realtime lane (KServe V2)"))
        .with_panel(_timeseries("Requests/s", "reqps", _q('sum by (family, model) (family_model:switchyard_requests:rate5m{family=~"v2_rest|v2_grpc"})', "{{family}} {{model}}")))
        .with_panel(_timeseries("P99 latency (SLO 50 ms)", "s", _q('family_model:switchyard_request_duration_seconds:p99_5m{family=~"v2_rest|v2_grpc"}', "{{family}} {{model}}")))
        .with_panel(_timeseries("Server-error ratio", "percentunit", _q('family_model:switchyard_request_errors:ratio_rate5m{family=~"v2_rest|v2_grpc"}', "{{family}} {{model}}")))
        .with_panel(_timeseries("P99 platform overhead", "s", _q('family:switchyard_platform_overhead_seconds:p99_5m{family=~"v2_rest|v2_grpc"}', "{{family}}")))
        .with_row(Row("Throughput and jobs"))
        .with_panel(_timeseries("Images/s", "short", _q('sum by (model) (rate(switchyard_items_total{domain="vision"}[$__rate_interval]))', "{{model}}")))
        .with_panel(_timeseries("Vision jobs finished/s", "short", _q('sum by (model, outcome) (rate(switchyard_jobs_finished_total{domain="vision"}[$__rate_interval]))', "{{model}} {{outcome}}")))
        .with_panel(_timeseries("Backlog", "short", _q('domain_priority:switchyard_task_queue_backlog:max{domain="vision"}', "p{{priority}}")))
        .with_panel(_timeseries("Breakers (0 closed, 1 half-open, 2 open)", "short", _q("max by (target) (switchyard_breaker_state)", "{{target}}")))
        .with_row(Row("Triton"))
        .with_panel(_timeseries("Inferences/s", "short", _q("sum by (model) (rate(nv_inference_count[$__rate_interval]))", "{{model}}")))
        .with_panel(_timeseries("Mean queue and compute time per request", "µs",
                                _q("sum by (model) (rate(nv_inference_queue_duration_us[$__rate_interval])) / sum by (model) (rate(nv_inference_request_success[$__rate_interval]))", "queue {{model}}"),
                                _q("sum by (model) (rate(nv_inference_compute_infer_duration_us[$__rate_interval])) / sum by (model) (rate(nv_inference_request_success[$__rate_interval]))", "compute {{model}}")))
        .with_panel(_timeseries("Triton failures/s", "short", _q("sum by (model) (rate(nv_inference_request_failure[$__rate_interval]))", "{{model}}")))
    )


def recsys() -> Dashboard:
    # The recsys domain's metrics come with its issue; the panels read the contract's names.
    return (
        _dashboard("switchyard-recsys", "Switchyard / Recsys", "Recommendation requests (realtime, SLO 50 ms) and jobs. Empty until the recsys domain exports its metrics.")
        .with_row(Row("Realtime"))
        .with_panel(_timeseries("Requests/s", "reqps", _q('sum by (model) (family_model:switchyard_requests:rate5m{family="recsys"})', "{{model}}")))
        .with_panel(_timeseries("P99 latency (SLO 50 ms)", "s", _q('family_model:switchyard_request_duration_seconds:p99_5m{family="recsys"}', "{{model}}")))
        .with_panel(_timeseries("Server-error ratio", "percentunit", _q('family_model:switchyard_request_errors:ratio_rate5m{family="recsys"}', "{{model}}")))
        .with_panel(_timeseries("Items/s", "short", _q('sum by (model) (rate(switchyard_items_total{domain="recsys"}[$__rate_interval]))', "{{model}}")))
        .with_row(Row("Jobs"))
        .with_panel(_timeseries("Backlog", "short", _q('domain_priority:switchyard_task_queue_backlog:max{domain="recsys"}', "p{{priority}}")))
        .with_panel(_timeseries("P99 queue time", "s", _q('domain_priority:switchyard_queue_time_seconds:p99_5m{domain="recsys"}', "p{{priority}}")))
    )


def temporal() -> Dashboard:
    return (
        _dashboard("switchyard-temporal", "Switchyard / Temporal", "The Temporal SDK's metrics from the API and workers: schedule-to-start, activity and workflow latency, task slots, pollers.")
        .with_row(Row("Task queues"))
        .with_panel(_timeseries("P99 activity schedule-to-start", "s",
                                _q("histogram_quantile(0.99, sum by (task_queue, le) (rate(temporal_activity_schedule_to_start_latency_bucket[$__rate_interval])))", "{{task_queue}}"),
                                description="Time an activity task waited for a worker: the task-queue backlog seen from Temporal."))
        .with_panel(_timeseries("P99 workflow-task schedule-to-start", "s",
                                _q("histogram_quantile(0.99, sum by (task_queue, le) (rate(temporal_workflow_task_schedule_to_start_latency_bucket[$__rate_interval])))", "{{task_queue}}")))
        .with_panel(_timeseries("Task slots used / available", "short",
                                _q("sum by (task_queue, worker_type) (temporal_worker_task_slots_used)", "used {{task_queue}} {{worker_type}}"),
                                _q("sum by (task_queue, worker_type) (temporal_worker_task_slots_available)", "free {{task_queue}} {{worker_type}}")))
        .with_panel(_timeseries("Pollers", "short", _q("sum by (task_queue, poller_type) (temporal_num_pollers)", "{{task_queue}} {{poller_type}}")))
        .with_row(Row("Activities and workflows"))
        .with_panel(_timeseries("P99 activity execution", "s",
                                _q("histogram_quantile(0.99, sum by (activity_type, le) (rate(temporal_activity_execution_latency_bucket[$__rate_interval])))", "{{activity_type}}")))
        .with_panel(_timeseries("Activities received / failed per second", "short",
                                _q("sum by (activity_type) (rate(temporal_activity_task_received_total[$__rate_interval]))", "received {{activity_type}}"),
                                _q("sum by (activity_type) (rate(temporal_activity_execution_failed_total[$__rate_interval]))", "failed {{activity_type}}")))
        .with_panel(_timeseries("Workflows completed / failed per second", "short",
                                _q("sum by (workflow_type) (rate(temporal_workflow_completed_total[$__rate_interval]))", "completed {{workflow_type}}"),
                                _q("sum by (workflow_type) (rate(temporal_workflow_failed_total[$__rate_interval]))", "failed {{workflow_type}}")))
        .with_panel(_timeseries("P99 workflow end to end", "s",
                                _q("histogram_quantile(0.99, sum by (workflow_type, le) (rate(temporal_workflow_endtoend_latency_bucket[$__rate_interval])))", "{{workflow_type}}")))
        .with_row(Row("Client requests to the Temporal server"))
        .with_panel(_timeseries("Requests/s by operation", "reqps", _q("sum by (operation) (rate(temporal_request_total[$__rate_interval]))", "{{operation}}")))
        .with_panel(_timeseries("P99 request latency", "s",
                                _q("histogram_quantile(0.99, sum by (operation, le) (rate(temporal_request_latency_bucket[$__rate_interval])))", "{{operation}}")))
    )


def engines() -> Dashboard:
    return (
        _dashboard("switchyard-engines", "Switchyard / Engines", "LLM engines' own pages (llama.cpp, vLLM) and the LLM worker's view of each endpoint.")
        .with_row(Row("Endpoints (LLM worker)"))
        .with_panel(_timeseries("Endpoint up", "short", _q("max by (model, endpoint) (switchyard_engine_up)", "{{model}} {{endpoint}}")))
        .with_panel(_timeseries("Engine pages scraped", "short", _q('up{job="engines"}', "{{model}} {{endpoint}} {{instance}}")))
        .with_row(Row("llama.cpp"))
        .with_panel(_timeseries("Generated tokens/s", "short", _q("sum by (model, endpoint) (rate(llamacpp:tokens_predicted_total[$__rate_interval]))", "{{model}} {{endpoint}}")))
        .with_panel(_timeseries("Prompt tokens/s", "short", _q("sum by (model, endpoint) (rate(llamacpp:prompt_tokens_total[$__rate_interval]))", "{{model}} {{endpoint}}")))
        .with_panel(_timeseries("Requests processing / deferred", "short",
                                _q("sum by (model, endpoint) (llamacpp:requests_processing)", "processing {{model}} {{endpoint}}"),
                                _q("sum by (model, endpoint) (llamacpp:requests_deferred)", "deferred {{model}} {{endpoint}}")))
        .with_panel(_timeseries("Decode throughput (engine's own average)", "short", _q("llamacpp:predicted_tokens_seconds", "{{model}} {{endpoint}}")))
        .with_row(Row("vLLM"))
        .with_panel(_timeseries("Requests running / waiting", "short",
                                _q("sum by (model_name) (vllm:num_requests_running)", "running {{model_name}}"),
                                _q("sum by (model_name) (vllm:num_requests_waiting)", "waiting {{model_name}}")))
        .with_panel(_timeseries("KV-cache usage", "percentunit", _q("max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}")))
        .with_panel(_timeseries("Tokens/s", "short",
                                _q("sum by (model_name) (rate(vllm:prompt_tokens_total[$__rate_interval]))", "prompt {{model_name}}"),
                                _q("sum by (model_name) (rate(vllm:generation_tokens_total[$__rate_interval]))", "generation {{model_name}}")))
        .with_panel(_timeseries("P99 engine TTFT", "s",
                                _q("histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))", "{{model_name}}")))
    )


def gpus() -> Dashboard:
    return (
        _dashboard("switchyard-gpus", "Switchyard / GPUs", "dcgm-exporter beside each GPU worker, and the workers' own NVML readings.")
        .with_row(Row("dcgm-exporter"))
        .with_panel(_timeseries("Framebuffer memory used", "percentunit", _q("gpu:dcgm_fb_used:ratio", "{{Hostname}} GPU {{gpu}}"), description="The alert fires over 95% (vLLM reserves 90%)."))
        .with_panel(_timeseries("Memory used (MiB)", "mbytes", _q("DCGM_FI_DEV_FB_USED", "{{Hostname}} GPU {{gpu}}")))
        .with_panel(_timeseries("Temperature", "celsius", _q("DCGM_FI_DEV_GPU_TEMP", "{{Hostname}} GPU {{gpu}}")))
        .with_panel(_timeseries("Utilisation", "percent", _q("DCGM_FI_DEV_GPU_UTIL", "{{Hostname}} GPU {{gpu}}")))
        .with_panel(_timeseries("Power", "watt", _q("DCGM_FI_DEV_POWER_USAGE", "{{Hostname}} GPU {{gpu}}")))
        .with_panel(_timeseries("Last XID error (0: none)", "short", _q("DCGM_FI_DEV_XID_ERRORS", "{{Hostname}} GPU {{gpu}}")))
        .with_row(Row("Workers' NVML readings"))
        .with_panel(_timeseries("GPU present", "short", _q("switchyard_gpu_present", "{{job}} {{instance}}")))
        .with_panel(_timeseries("Memory used", "percentunit", _q("switchyard_gpu_memory_used_bytes / switchyard_gpu_memory_total_bytes", "{{job}} GPU {{gpu}}")))
        .with_panel(_timeseries("Temperature", "celsius", _q("switchyard_gpu_temperature_celsius", "{{job}} GPU {{gpu}}")))
        .with_panel(_timeseries("Utilisation", "percentunit", _q("switchyard_gpu_utilization_ratio", "{{job}} GPU {{gpu}}")))
    )


def shadow() -> Dashboard:
    """Shadow deployment (docs/shadow.md): what is mirrored or dropped, and how candidates compare."""
    return (
        _dashboard("switchyard-shadow", "Switchyard / Shadow", "Sampled live requests replayed on shadow candidates: cases mirrored or dropped, agreement, latency deltas.")
        .with_row(Row("Cases"))
        .with_panel(_timeseries("Cases/s by outcome", "ops", _q("sum by (model, outcome) (rate(switchyard_shadow_cases_total[$__rate_interval]))", "{{model}} {{outcome}}"),
                                description="mirrored, or dropped (budget full, hand-off full, too large) or failed"))
        .with_panel(_timeseries("Comparisons/s", "ops", _q("sum by (model, candidate, outcome) (rate(switchyard_shadow_comparisons_total[$__rate_interval]))",
                                                          "{{model}} vs {{candidate}} {{outcome}}")))
        .with_row(Row("Candidates"))
        .with_panel(_timeseries("Mean agreement", "percentunit",
                                _q("sum by (model, candidate, metric) (rate(switchyard_shadow_agreement_ratio_sum[$__rate_interval]))"
                                   " / sum by (model, candidate, metric) (rate(switchyard_shadow_agreement_ratio_count[$__rate_interval]))",
                                   "{{model}} vs {{candidate}} {{metric}}"), description="top1 and topk_overlap (vision, recsys), rouge_l (LLM)"))
        .with_panel(_timeseries("Median latency delta (candidate - primary)", "s",
                                _q("histogram_quantile(0.5, sum by (model, candidate, le) (rate(switchyard_shadow_latency_delta_seconds_bucket[$__rate_interval])))",
                                   "{{model}} vs {{candidate}}")))
    )


DASHBOARDS: Final[dict[str, Callable[[], Dashboard]]] = {
    "api-slos": api_slos,
    "llm": llm,
    "vision": vision,
    "recsys": recsys,
    "temporal": temporal,
    "engines": engines,
    "gpus": gpus,
    "shadow": shadow,
}


# ---- rendering -----------------------------------------------------------------------------------

def render_dashboard(name: str) -> str:
    """The dashboard's JSON, as committed (stable key order, trailing newline)."""
    model = DASHBOARDS[name]().build()
    # The builders leave every panel id 0; Grafana needs them unique (links, "view panel", alerts).
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


DATASOURCES_YAML: Final = f"""\
# Generated by switchyard.devstack.dashboards (Grafana {GRAFANA_VERSION} provisioning). The URL is the
# Prometheus that scrapes Switchyard; override it with the environment (Grafana expands $VARS here).
apiVersion: 1
datasources:
  - name: Prometheus (Switchyard)
    type: prometheus
    uid: {DATASOURCE_UID}
    access: proxy
    url: ${{SWITCHYARD_PROMETHEUS_URL}}
    isDefault: true
    editable: false
    jsonData:
      timeInterval: 15s
"""

DASHBOARDS_YAML: Final = f"""\
# Generated by switchyard.devstack.dashboards (Grafana {GRAFANA_VERSION} provisioning). Point
# SWITCHYARD_GRAFANA_DASHBOARDS at infra/grafana/dashboards (or where a deployment mounts it).
apiVersion: 1
providers:
  - name: switchyard
    folder: Switchyard
    type: file
    disableDeletion: true
    allowUiUpdates: false
    options:
      path: ${{SWITCHYARD_GRAFANA_DASHBOARDS}}
      foldersFromFilesStructure: false
"""


def render_all() -> dict[str, str]:
    """Every generated file, by path relative to infra/grafana."""
    files = {f"dashboards/{name}.json": render_dashboard(name) for name in DASHBOARDS}
    files["provisioning/datasources/switchyard.yml"] = DATASOURCES_YAML
    files["provisioning/dashboards/switchyard.yml"] = DASHBOARDS_YAML
    return files


def panel_queries(dashboard_json: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of a rendered dashboard, rows' panels included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            out.extend((str(p.get("title")), str(t["expr"])) for t in p.get("targets") or [])
            walk(p.get("panels") or [])

    walk(json.loads(dashboard_json).get("panels") or [])
    return out


def write(root: Path) -> list[Path]:
    """Write the generated files under ``root`` (infra/grafana); the paths written."""
    written = []
    for rel, text in render_all().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str]) -> int:
    root = Path(argv[0]) if argv else Path("infra/grafana")
    for path in write(root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Switchyard's own Prometheus metrics, exactly as docs/metrics.md (the contract) declares them.

Every process imports its metrics from here, so names, labels and buckets live in one place.
Label values must stay bounded (docs/metrics.md, "Label values"): use ``model_label`` for a model
name a client sent, never an id, a key or client text.

With ``PROMETHEUS_MULTIPROC_DIR`` set before this module is imported (the API's entry point does,
for several API processes), values go to files in that directory and one page sums them; gauges
declare how they aggregate (``multiprocess_mode``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

if TYPE_CHECKING:
    from switchyard.common.contracts import JobSpec

# The contract has no ``*_created`` series (prometheus-client adds them to counters and histograms
# in single-process mode; multiprocess pages never have them).
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TTFT_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
OVERHEAD_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
QUEUE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# Route families (label ``family``).
FAMILIES: Final = ("jobs", "openai", "v2_rest", "v2_grpc", "admin", "recsys")
UNKNOWN_MODEL: Final = "unknown"

# ---------------------------------------------------------------- API

REQUESTS = Counter("switchyard_requests", "Requests answered, by route family and outcome (a stream counts once, with the status it started with)",
                   ["family", "model", "status"])
REQUEST_DURATION = Histogram("switchyard_request_duration_seconds", "Request arrival at the API to the last byte of the answer",
                             ["family", "model"], buckets=REQUEST_BUCKETS)
TTFT = Histogram("switchyard_ttft_seconds", "LLM time to first token as the client sees it (arrival to the first token written)",
                 ["model"], buckets=TTFT_BUCKETS)
PLATFORM_OVERHEAD = Histogram("switchyard_platform_overhead_seconds", "Time spent in the platform, not in the engine (X-Switchyard-Overhead-Ms)",
                              ["family"], buckets=OVERHEAD_BUCKETS)
TASK_QUEUE_BACKLOG = Gauge("switchyard_task_queue_backlog", "Jobs accepted and not yet started by a worker (shared counter; aggregate with max)",
                           ["domain", "priority"], multiprocess_mode="max")
BREAKER_STATE = Gauge("switchyard_breaker_state", "Circuit breaker in front of a V2 model's worker or an LLM engine endpoint: 0 closed, 1 half-open, 2 open",
                      ["target"], multiprocess_mode="max")

# ---------------------------------------------------------------- workers

QUEUE_TIME = Histogram("switchyard_queue_time_seconds", "Job accepted (row committed) to its activity's first attempt starting",
                       ["domain", "priority"], buckets=QUEUE_BUCKETS)
JOBS_FINISHED = Counter("switchyard_jobs_finished", "Jobs that reached an end state", ["domain", "model", "outcome"])
TOKENS = Counter("switchyard_tokens", "Tokens the engines processed (rate = tokens/s)", ["model", "kind"])
# Completions the API started itself (docs/llm-speed.md), by how its run ended: succeeded, failed (the
# workflow retries), cancelled, handed_over (a worker took it over), or queued (not started here).
FAST_STARTS = Counter("switchyard_llm_fast_starts", "Completions the API started itself, by how its run ended "
                      "(succeeded, failed, cancelled, handed_over; queued: the model's backlog was too long)", ["model", "outcome"])
ITEMS = Counter("switchyard_items", "Inputs processed: images (vision), items (recsys)", ["domain", "model"])
ENGINE_REQUESTS = Counter("switchyard_engine_requests", "Calls to an engine endpoint, one per endpoint tried", ["model", "endpoint", "outcome"])
ENGINE_UP = Gauge("switchyard_engine_up", "The endpoint answered its last health probe", ["model", "endpoint"], multiprocess_mode="max")
ENGINE_RUNNING = Gauge("switchyard_engine_requests_running", "Generations in flight at this worker on this endpoint", ["model", "endpoint"],
                       multiprocess_mode="livesum")

# ---------------------------------------------------------------- GPU (NVML), workers

# ---------------------------------------------------------------- shadow deployment (docs/shadow.md)

RATIO_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
DELTA_BUCKETS: Final = (-5, -1, -0.25, -0.1, -0.05, -0.025, -0.01, -0.005, 0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
SHADOW_CASES = Counter("switchyard_shadow_cases", "Answered requests sampled for shadowing, by what became of them "
                       "(mirrored, dropped_backlog, dropped_queue, dropped_too_large, failed)", ["model", "outcome"])
SHADOW_COMPARISONS = Counter("switchyard_shadow_comparisons", "Shadow cases the shadow worker finished (compared, candidate_failed)",
                             ["model", "candidate", "outcome"])
SHADOW_AGREEMENT = Histogram("switchyard_shadow_agreement_ratio", "Agreement of the candidate with the primary per case, 0..1 "
                             "(metric: top1, topk_overlap, rouge_l)", ["model", "candidate", "metric"], buckets=RATIO_BUCKETS)
SHADOW_LATENCY_DELTA = Histogram("switchyard_shadow_latency_delta_seconds", "Candidate minus primary latency per case (LLM: time to first token)",
                                 ["model", "candidate"], buckets=DELTA_BUCKETS)
CANARY_REQUESTS = Counter("switchyard_canary_requests", "Live requests answered by a model's canary candidate (outcome: ok, error)",
                          ["model", "candidate", "outcome"])
CATALOG_CHANGES = Counter("switchyard_catalog_changes", "Promotions and rollbacks this API process recorded (action: promote, rollback, resume; "
                          "by: admin, automatic)", ["model", "action", "by"])

GPU_PRESENT = Gauge("switchyard_gpu_present", "1 when NVML found a GPU", multiprocess_mode="max")
GPU_MEMORY_USED = Gauge("switchyard_gpu_memory_used_bytes", "GPU memory in use", ["gpu"], multiprocess_mode="max")
GPU_MEMORY_TOTAL = Gauge("switchyard_gpu_memory_total_bytes", "GPU memory in all", ["gpu"], multiprocess_mode="max")
GPU_TEMPERATURE = Gauge("switchyard_gpu_temperature_celsius", "GPU temperature", ["gpu"], multiprocess_mode="max")
GPU_UTILIZATION = Gauge("switchyard_gpu_utilization_ratio", "GPU utilisation, 0..1", ["gpu"], multiprocess_mode="max")


def model_label(name: str | None, known: bool) -> str:
    """The ``model`` label of a request: a catalog name, ``unknown`` for a name the catalog does not
    know (client text must not become a label value), ``""`` for a route without a model."""
    if not name:
        return ""
    return name if known else UNKNOWN_MODEL


def endpoint_label(engine: str, position: int) -> str:
    """An engine endpoint's label: ``<engine>-<position in the model's endpoints>``, never its URL."""
    return f"{engine}-{position}"


def observe_queue_time(domain: str, spec: JobSpec, started_s: float) -> None:
    """A job's queue time, at its first attempt: accepted (row committed) to the activity starting."""
    QUEUE_TIME.labels(domain=domain, priority=str(spec.priority_key)).observe(max(0.0, started_s - spec.accepted_at_ms / 1000))


def count_tokens(model: str, prompt: int, completion: int) -> None:
    """Tokens an engine processed for ``model`` (catalog name)."""
    if prompt:
        TOKENS.labels(model=model, kind="prompt").inc(prompt)
    if completion:
        TOKENS.labels(model=model, kind="completion").inc(completion)

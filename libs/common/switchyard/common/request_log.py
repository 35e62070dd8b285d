"""The per-request record (REQ-OPS-02), shared by the API (which writes it) and the workers (which
carry its request id to the engines and complete the rows of jobs).

Pure parts only: the request id's sanitising, the record, its log fields and database row, the
parameters it may keep (never prompt, message or image text), and the request id of the work in
progress (a contextvar the LLM worker's HTTP client sends as ``X-Request-Id``).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import httpx

REQUEST_ID_HEADER: Final = "X-Request-Id"
OVERHEAD_HEADER: Final = "X-Switchyard-Overhead-Ms"
# What a V2 worker's front end (vision, recsys) reports to the API (which strips them before
# answering): the model's time, and its items (images classified, items recommended).
ENGINE_MS_HEADER: Final = "x-switchyard-engine-ms"
ITEMS_HEADER: Final = "x-switchyard-items"

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Request parameters a record keeps: numbers and switches only. Text (prompt, messages, stop
# strings, images, user) never enters a log line or a row.
PARAM_KEYS: Final = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "top_k", "seed", "logprobs",
                               "top_logprobs", "ignore_eos", "presence_penalty", "frequency_penalty", "encoding_format", "dimensions"})


def request_id(given: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a sane token (≤128 of ``[A-Za-z0-9._:-]``), else a new one."""
    if given is not None and _SANE_ID.match(given):
        return given
    return os.urandom(16).hex()  # as random as uuid4's hex, a quarter of its cost


def safe_params(values: dict[str, Any]) -> dict[str, Any]:
    """The numeric and boolean parameters of a request (``PARAM_KEYS``); never text."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in PARAM_KEYS and (v is None or isinstance(v, bool | int | float) or (k == "encoding_format" and v in ("float", "base64"))):
            if v is not None:
                out[k] = v
        elif k == "stop" and isinstance(v, list | str):
            out["stop_count"] = len(v) if isinstance(v, list) else 1  # how many, not what
    return out


def params_of(obj: object) -> dict[str, Any]:
    """``safe_params`` of a request model's attributes (without dumping its text)."""
    return safe_params({k: getattr(obj, k) for k in (*PARAM_KEYS, "stop") if hasattr(obj, k)})


def outcome_of(status: str) -> str:
    """A request's outcome from its status when the handler set none."""
    if status.isdigit():
        code = int(status)
        return "ok" if code < 400 else "client_closed" if code == 499 else "client_error" if code < 500 else "server_error"
    return "ok" if status == "OK" else "server_error" if status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED") else "client_error"


@dataclass(slots=True)
class RequestRecord:
    """One request as the API saw it; handlers fill in what they learn (``switchyard.api.request_log.current()``)."""

    request_id: str
    family: str
    route: str
    method: str
    started: float = field(default_factory=time.perf_counter)  # perf_counter at arrival
    arrived_at: float = field(default_factory=time.time)
    status: str = ""
    tenant: str | None = None
    key_id: str | None = None
    # A catalog name, "unknown" (a name the catalog does not know) or "" (no model).
    model: str = ""
    endpoint: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    items: int | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    engine_ms: float | None = None
    total_ms: float | None = None
    overhead_ms: float | None = None
    attempts: int | None = None
    priority: int | None = None
    outcome: str | None = None
    job_id: str | None = None
    # The job id goes in the row only when this request created the job (an idempotent replay's does not).
    owns_job: bool = True
    # An OpenAI completion: TTFT is measured (arrival to the first token written to the client).
    completion: bool = False
    stream: bool = False

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def overhead(self, total_ms: float) -> float | None:
        """Time in the platform, not the engine: total minus engine time (never below 0)."""
        return None if self.engine_ms is None else max(0.0, total_ms - self.engine_ms)

    def log_fields(self) -> dict[str, Any]:
        """The request's JSON log line fields (``switchyard.requests``): numbers, names and ids, no text."""
        return {
            "request_id": self.request_id, "family": self.family, "route": self.route, "method": self.method, "status": self.status,
            "tenant": self.tenant, "key_id": self.key_id, "model": self.model, "endpoint": self.endpoint, "params": self.params,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "items": self.items,
            "queue_ms": _r(self.queue_ms), "ttft_ms": _r(self.ttft_ms), "engine_ms": _r(self.engine_ms), "total_ms": _r(self.total_ms),
            "overhead_ms": _r(self.overhead_ms), "attempts": self.attempts, "priority": self.priority, "outcome": self.outcome, "job_id": self.job_id,
        }

    def row(self) -> dict[str, Any]:
        """The request's row in ``requests`` (switchyard.common.db.models.RequestRow)."""
        fields = self.log_fields()
        fields["key_id"] = uuid.UUID(self.key_id) if self.key_id else None
        fields["job_id"] = uuid.UUID(self.job_id) if self.job_id and self.owns_job else None
        fields["created_at"] = _utc(self.arrived_at)
        fields["outcome"] = self.outcome or ""
        return fields


def _r(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def endpoint_of(result: dict[str, Any] | None, model_spec: dict[str, Any] | None) -> str | None:
    """The endpoint label (``<engine>-<position>``, switchyard.common.metrics.endpoint_label) of an
    LLM job's result, whose ``endpoint`` is ``<engine>:<url>``, from the model's catalog snapshot."""
    used = (result or {}).get("endpoint")
    llm = (model_spec or {}).get("llm") or {}
    if not isinstance(used, str):
        return None
    for i, ep in enumerate(llm.get("endpoints") or []):
        if isinstance(ep, dict) and f"{ep.get('engine')}:{ep.get('url')}" == used:
            return f"{ep.get('engine')}-{i}"
    return None


def items_of(result: dict[str, Any] | None) -> int | None:
    """A job's items: the images a vision job classified (one prediction list each), the items a
    recsys job recommended (all its users' together, as ``/v1/recommendations`` counts them)."""
    predictions = (result or {}).get("predictions")
    if isinstance(predictions, list):
        return len(predictions)
    recommendations = (result or {}).get("recommendations")
    if isinstance(recommendations, list):
        return sum(len(r.get("items") or []) for r in recommendations if isinstance(r, dict))
    return None


# ---------------------------------------------------------------- the request id of the work in progress (workers)

CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("switchyard_request_id", default=None)


async def send_request_id(request: httpx.Request) -> None:
    """An httpx ``event_hooks["request"]`` hook: the work's request id goes to the engine as ``X-Request-Id``."""
    rid = CURRENT_REQUEST_ID.get()
    if rid and REQUEST_ID_HEADER not in request.headers:
        request.headers[REQUEST_ID_HEADER] = rid

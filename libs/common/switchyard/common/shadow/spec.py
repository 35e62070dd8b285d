"""The catalog's ``shadow`` field and the case a mirrored request becomes (the ``ShadowCompare``
workflow's input on the ``shadow`` task queue)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from switchyard.common.contracts import JobOutcome, JobSpec

# What is compared, per domain: vision top-1 agreement and top-5 overlap of the labels; recsys the
# overlap of the top-k item lists (and top-1 agreement); LLM ROUGE-L F1 of the texts (word tokens)
# with the token-count and latency deltas.
Comparison = Literal["topk", "rank_overlap", "rouge_l"]
COMPARISON_OF: dict[str, Comparison] = {"vision": "topk", "recsys": "rank_overlap", "llm": "rouge_l"}

SHADOW_WORKFLOW = "ShadowCompare"
SHADOW_QUEUE = "shadow"
# Shadow work runs after everything else on its queue (1 runs first, 5 last).
SHADOW_PRIORITY = 5
# A case nobody picked up in this time (no shadow worker running) ends without a comparison.
CASE_TIMEOUT = timedelta(minutes=10)


class CanarySpec(BaseModel):
    """``shadow.canary:``: ``weight`` of the model's live requests are answered by the shadow's
    candidate (0: off); the candidate is rolled back automatically (weight 0, a change row) once it
    had ``min_requests`` in the last ``window_s`` and its error rate or p99 passed a threshold
    (docs/shadow.md, "Canary and promotion")."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0.0, le=1.0)
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99_ms: float = Field(default=1000.0, gt=0)
    window_s: float = Field(default=60.0, gt=0, le=86400)
    min_requests: int = Field(default=20, ge=1)


class ShadowSpec(BaseModel):
    """``shadow:`` of a catalog model: ``sample_rate`` of its live requests are replayed on
    ``candidate`` (another model of the catalog, same domain) once the primary has answered."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(min_length=1, max_length=128)
    sample_rate: float = Field(ge=0.0, le=1.0)
    # The domain's comparison (the only one each domain has today); checked against the domain.
    compare: Comparison | None = None
    # A share of live traffic answered by the candidate (canary), with its rollback thresholds.
    canary: CanarySpec | None = None


# Bytes travel base64 in JSON (Temporal's payloads): binary tensors and protobuf are not UTF-8.
_BINARY = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


class V2Call(BaseModel):
    """A realtime KServe V2 request as the API forwarded it."""

    model_config = _BINARY

    protocol: Literal["rest", "grpc"]
    # REST body (JSON, or JSON + binary tensors) or a serialized ModelInferRequest; None once the
    # case is sent: the body then waits in Redis under the case id (switchyard.common.shadow.bodies).
    body: bytes | None
    headers: dict[str, str] = {}  # REST: content-type, inference-header-content-length


class LlmCall(BaseModel):
    """An LLM generation: the engine's input (after the model's PII policy), the primary's answer."""

    input: dict[str, Any]  # LlmInput
    text: str
    completion_tokens: int
    ttft_ms: float | None = None


class ShadowCase(BaseModel):
    """One mirrored request: what the primary got and answered, for the candidate to be compared on."""

    model_config = _BINARY

    case_id: str
    domain: str
    model: str
    candidate: str
    # The candidate as the catalog declared it when mirrored (LLM: its endpoints).
    candidate_spec: dict[str, Any] | None = None
    tenant: str | None = None
    request_id: str | None = None
    primary_ms: Annotated[float, Field(ge=0)]
    v2: V2Call | None = None
    v2_answer: bytes | None = None
    v2_answer_headers: dict[str, str] = {}
    llm: LlmCall | None = None


class ShadowComparison(BaseModel):
    """What the shadow worker found (stored in ``shadow_results``; never any request content)."""

    case_id: str
    model: str
    candidate: str
    domain: str
    outcome: Literal["compared", "candidate_failed"]
    error: str | None = None  # the candidate's error kind, never its text
    primary_ms: float
    candidate_ms: float | None = None
    top1_agreement: float | None = None
    topk_overlap: float | None = None
    text_similarity: float | None = None
    primary_tokens: int | None = None
    candidate_tokens: int | None = None
    primary_ttft_ms: float | None = None
    candidate_ttft_ms: float | None = None


class ShadowOffer(BaseModel):
    """A finished LLM job the workflow sampled (the ``shadow.offer`` activity's input)."""

    spec: JobSpec
    outcome: JobOutcome

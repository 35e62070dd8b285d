"""Pydantic models at the boundaries: job requests (API), workflow inputs/outputs (Temporal), events."""

from __future__ import annotations

import base64
import binascii
import enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from switchyard.common.priority import PriorityValue

# ---------------------------------------------------------------- request bodies (per domain)


def _storable(text: str) -> str:
    """Refuse text PostgreSQL cannot store (JSONB and text columns refuse NUL) or UTF-8 cannot encode
    (unpaired surrogates, which JSON's ``\\ud800`` escapes let through)."""
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters (\\u0000)")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("text must not contain unpaired surrogates") from None
    return text


# Every client-supplied string that is stored (job rows, Temporal payloads) or sent on to an engine.
StorableStr = Annotated[str, AfterValidator(_storable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[StorableStr, Field(max_length=200_000)]


class LlmInput(_Strict):
    """One generation: chat ``messages`` or a raw ``prompt`` (exactly one of them)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = None
    prompt: Annotated[StorableStr, Field(min_length=1, max_length=200_000)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=8192)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # Fixed per job so a retried generation reproduces what was already streamed.
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    stop: Annotated[list[Annotated[StorableStr, Field(min_length=1, max_length=64)]], Field(max_length=4)] = []
    # Number of independent choices to generate.
    n: Annotated[int, Field(ge=1, le=8)] = 1
    # Per-token log probabilities (and the top alternatives) in the token events.
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Keep generating until max_tokens even past end-of-sequence (load tests, benchmarks).
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _one_of_messages_or_prompt(self) -> LlmInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    def prompt_text(self) -> str:
        """The text the model reads (chat turns joined), for token counting."""
        if self.messages is None:
            return self.prompt or ""
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)


class VisionInput(_Strict):
    """Images (JPEG/PNG, base64) classified by a V2 image model such as ``vision-classify``."""

    images: Annotated[list[Annotated[str, Field(min_length=4, max_length=8_000_000)]], Field(min_length=1, max_length=32)]
    top_k: Annotated[int, Field(ge=1, le=20)] = 5

    @field_validator("images")
    @classmethod
    def _base64(cls, images: list[str]) -> list[str]:
        for i, img in enumerate(images):
            try:
                base64.b64decode(img, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"images[{i}] is not valid base64") from None
        return images

    def decoded(self) -> list[bytes]:
        return [base64.b64decode(img) for img in self.images]


# Recsys ids are the feature store's entity keys (Int64, dense from 0 in the generated data).
EntityId = Annotated[int, Field(ge=0, le=2**63 - 1)]
MAX_RECOMMENDATIONS = 100
MAX_CANDIDATES = 1000


class RecommendationQuery(_Strict):
    """One user's top ``k``: of ``candidates`` when given, else of what retrieval finds."""

    user_id: EntityId
    k: Annotated[int, Field(ge=1, le=MAX_RECOMMENDATIONS)] = 10
    candidates: Annotated[list[EntityId], Field(min_length=1, max_length=MAX_CANDIDATES)] | None = None
    # Leave out items the user has already interacted with (the feature store's recent history).
    exclude_seen: bool = True


class RecommendationRequest(RecommendationQuery):
    """``POST /v1/recommendations``."""

    model: Annotated[str, Field(min_length=1, max_length=128)] = "recsys-rank"


# retrieved: found by retrieval and ranked; candidate: one of the request's candidates, ranked;
# popular: the popularity fallback (unknown user), in popularity order.
Reason = Literal["retrieved", "candidate", "popular"]


class RecommendedItem(BaseModel):
    item_id: int
    score: float
    reason: Reason


class Recommendation(BaseModel):
    """One user's answer. ``fallback``: the user is unknown to the feature store (popularity
    ranking); ``unknown_items``: candidates the feature store does not know (left out)."""

    user_id: int
    items: list[RecommendedItem]
    fallback: bool
    unknown_items: list[int] = []


class RecommendationResponse(Recommendation):
    model: str


RecsysEventType = Literal["view", "click", "purchase"]


class RecsysEventCreate(_Strict):
    """``POST /v1/recsys/events``: one interaction, pushed to the feature store's online views."""

    user_id: EntityId
    item_id: EntityId
    event_type: RecsysEventType = "click"


class RecsysInput(_Strict):
    """A recsys job: the top ``k`` for each of ``users`` (same candidates and options for all)."""

    users: Annotated[list[EntityId], Field(min_length=1, max_length=1000)]
    k: Annotated[int, Field(ge=1, le=MAX_RECOMMENDATIONS)] = 10
    candidates: Annotated[list[EntityId], Field(min_length=1, max_length=MAX_CANDIDATES)] | None = None
    exclude_seen: bool = True

    def query(self, user_id: int) -> RecommendationQuery:
        return RecommendationQuery(user_id=user_id, k=self.k, candidates=self.candidates, exclude_seen=self.exclude_seen)


class _JobCreateBase(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    priority: PriorityValue | None = None
    metadata: Annotated[dict[StorableStr, StorableStr], Field(max_length=32)] = {}


class LlmJobCreate(_JobCreateBase):
    domain: Literal["llm"]
    input: LlmInput


class VisionJobCreate(_JobCreateBase):
    domain: Literal["vision"]
    input: VisionInput


class RecsysJobCreate(_JobCreateBase):
    domain: Literal["recsys"]
    input: RecsysInput


JobCreate = Annotated[LlmJobCreate | VisionJobCreate | RecsysJobCreate, Field(discriminator="domain")]

# ---------------------------------------------------------------- job state


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(BaseModel):
    """Milliseconds. queue: accepted → first attempt started; ttft: attempt start → first token;
    engine: time inside the engine's calls; overhead: total minus engine (the platform's share)."""

    queue_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    engine_ms: float | None = None
    overhead_ms: float | None = None


class JobError(BaseModel):
    type: str
    message: str


# ---------------------------------------------------------------- workflow contracts


class JobSpec(BaseModel):
    """Workflow input: everything a worker needs to run one job."""

    job_id: str
    domain: str
    model: str
    # None: too large for a Temporal payload (images); the worker reads it from the job's row.
    input: dict[str, Any] | None
    priority_key: int
    accepted_at_ms: float
    # The model as the catalog declared it at acceptance (Catalog.snapshot): a catalog reload
    # meanwhile does not change what an accepted job runs on. None: look it up (older jobs).
    model_spec: dict[str, Any] | None = None
    # The X-Request-Id of the request that created the job: the worker sends it to the engine.
    request_id: str | None = None


class LlmChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None


class LlmGeneration(BaseModel):
    choices: list[LlmChoice]
    usage: Usage
    timings: Timings
    endpoint: str


class Prediction(BaseModel):
    label: str
    score: float


class RecsysRanking(BaseModel):
    """A recsys job's answers, one per user in request order."""

    recommendations: list[Recommendation]
    timings: Timings


class VisionClassification(BaseModel):
    """One image's top-k, in request order."""

    predictions: list[list[Prediction]]
    timings: Timings


class JobOutcome(BaseModel):
    """What a workflow records when it ends (also its return value)."""

    job_id: str
    status: JobStatus
    result: dict[str, Any] | None = None
    error: JobError | None = None
    usage: Usage | None = None
    timings: Timings | None = None


# ---------------------------------------------------------------- events


# progress: {"done": n, "total": m} for batch jobs (vision, recsys).
EventType = Literal["status", "token", "reset", "result", "error", "progress"]


class JobEvent(BaseModel):
    """One entry of a job's event stream; ``id`` is the Redis Stream id (monotonic, resumable)."""

    id: str
    type: EventType
    data: dict[str, Any]

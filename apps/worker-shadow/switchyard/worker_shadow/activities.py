"""``shadow.compare``: replay a case on its candidate through the platform's own interfaces (V2
candidates at their domain worker's KServe V2 endpoint, LLM candidates at their engines through
the engine adapters), compare with the primary's answer, record numbers only (PostgreSQL and
metrics), and give the case's place in the shadow budget back."""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
from temporalio import activity

from switchyard.common.contracts import LlmInput
from switchyard.common.db.shadow_store import ShadowStore
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.factory import engine_for
from switchyard.common.http1 import Http1Client
from switchyard.common.metrics import SHADOW_AGREEMENT, SHADOW_COMPARISONS, SHADOW_LATENCY_DELTA
from switchyard.common.model_registry import ModelEntry
from switchyard.common.shadow.bodies import ShadowBodies
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.common.shadow.spec import SHADOW_PRIORITY, ShadowCase, ShadowComparison
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.asgi import PROTOBUF
from switchyard.common.v2.dataplane import model_path
from switchyard.worker_shadow.answers import outputs, ranked
from switchyard.worker_shadow.compare import rouge_l, topk_agreement

# Vision compares the top 5 labels; recsys the whole top-k list the request asked for.
VISION_K = 5


class ShadowActivities:
    def __init__(self, store: ShadowStore, budget: ShadowBudget, bodies: ShadowBodies, v2: dict[str, Http1Client], http: httpx.AsyncClient,
                 timeout_s: float) -> None:
        self.store, self.budget, self.bodies, self.v2, self.http, self.timeout_s = store, budget, bodies, v2, http, timeout_s

    @activity.defn(name="shadow.compare")
    async def compare(self, case: ShadowCase) -> ShadowComparison:
        try:
            result = await (self._llm(case) if case.llm is not None else self._v2(case))
            await self.store.record(result, case.tenant)
            _observe(result)
            if case.v2 is not None:  # kept until recorded: a retried attempt needs it
                await self.bodies.drop(case.case_id)
            return result
        finally:
            await self.budget.give_back(case.case_id)

    def _failed(self, case: ShadowCase, error: str, candidate_ms: float | None = None) -> ShadowComparison:
        return ShadowComparison(case_id=case.case_id, model=case.model, candidate=case.candidate, domain=case.domain, outcome="candidate_failed",
                                error=error[:64], primary_ms=case.primary_ms, candidate_ms=candidate_ms)

    async def _v2(self, case: ShadowCase) -> ShadowComparison:
        call, worker = case.v2, self.v2.get(case.domain)
        assert call is not None and case.v2_answer is not None
        if worker is None:
            return self._failed(case, "NoUpstream")
        body = call.body if call.body is not None else await self.bodies.get(case.case_id)
        if body is None:  # lapsed, or Redis lost it
            return self._failed(case, "BodyLost")
        headers = call.headers
        if call.protocol == "rest":
            path = model_path(case.candidate, None) + "/infer"
        else:  # the same ModelInferRequest, addressed to the candidate
            msg = pb.ModelInferRequest.FromString(body)
            msg.model_name, msg.model_version = case.candidate, ""
            path, body, headers = "/v2/grpc/ModelInfer", msg.SerializeToString(), {"content-type": PROTOBUF}
        started = time.perf_counter()
        try:
            r = await worker.request("POST", quote(path), body, headers, timeout_s=self.timeout_s)
        except TimeoutError:
            return self._failed(case, "Timeout")
        except OSError as e:
            return self._failed(case, type(e).__name__)
        ms = (time.perf_counter() - started) * 1000
        if r.status != 200:
            return self._failed(case, f"HTTP {r.status}", ms)
        primary = outputs(call.protocol, case.v2_answer, case.v2_answer_headers)
        candidate = outputs(call.protocol, r.body, r.headers)
        p = ranked(primary, VISION_K)
        k = VISION_K if case.domain == "vision" else max(1, len(p[0]) if p else 1)
        top1, overlap = topk_agreement(p, ranked(candidate, k), k)
        return ShadowComparison(case_id=case.case_id, model=case.model, candidate=case.candidate, domain=case.domain, outcome="compared",
                                primary_ms=case.primary_ms, candidate_ms=ms, top1_agreement=top1, topk_overlap=overlap)

    async def _llm(self, case: ShadowCase) -> ShadowComparison:
        assert case.llm is not None and case.candidate_spec is not None
        entry, inp = ModelEntry.model_validate(case.candidate_spec), LlmInput.model_validate(case.llm.input).model_copy(update={"n": 1})
        error = "NoEndpoint"
        for endpoint in entry.endpoints:  # fallback order, as the LLM worker tries them
            started, ttft, text, tokens = time.perf_counter(), None, [], 0
            try:
                async for chunk in engine_for(endpoint, self.http).stream(inp, seed=inp.seed, priority=SHADOW_PRIORITY):
                    if chunk.text:
                        ttft = ttft if ttft is not None else (time.perf_counter() - started) * 1000
                        text.append(chunk.text)
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            except (EngineError, httpx.HTTPError) as e:
                error = e.kind if isinstance(e, EngineError) else type(e).__name__
                if text:  # it had answered: a broken stream is a failure, not a reason to ask another
                    break
                continue
            ms = (time.perf_counter() - started) * 1000
            return ShadowComparison(case_id=case.case_id, model=case.model, candidate=case.candidate, domain="llm", outcome="compared",
                                    primary_ms=case.primary_ms, candidate_ms=ms, text_similarity=rouge_l(case.llm.text, "".join(text)),
                                    primary_tokens=case.llm.completion_tokens, candidate_tokens=tokens or len(text),
                                    primary_ttft_ms=case.llm.ttft_ms, candidate_ttft_ms=ttft)
        return self._failed(case, error)


def _observe(c: ShadowComparison) -> None:
    SHADOW_COMPARISONS.labels(model=c.model, candidate=c.candidate, outcome=c.outcome).inc()
    for metric, value in (("top1", c.top1_agreement), ("topk_overlap", c.topk_overlap), ("rouge_l", c.text_similarity)):
        if value is not None:
            SHADOW_AGREEMENT.labels(model=c.model, candidate=c.candidate, metric=metric).observe(value)
    if c.domain == "llm":
        primary, candidate = c.primary_ttft_ms, c.candidate_ttft_ms
    else:
        primary, candidate = c.primary_ms, c.candidate_ms
    if primary is not None and candidate is not None:
        SHADOW_LATENCY_DELTA.labels(model=c.model, candidate=c.candidate).observe((candidate - primary) / 1000)

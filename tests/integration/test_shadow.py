"""Shadow deployment against the real stack (docs/shadow.md): sampled live requests of every domain
replayed on their candidates by worker-shadow and compared: fp32 vs int8 EfficientNet-Lite0 over V2
REST and gRPC, two recsys ranker versions over /v1/recommendations, SmolLM2 on llama.cpp vs on vLLM
over the OpenAI API, with the report ``GET /v1/shadow/{model}``, its metrics and its key checks.
The models shadowed here are copies of the shipped ones that mirror every request (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SHADOWED  # pants: no-infer-dep
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from temporalio.client import Client

from switchyard.common.payload_codec import KeyRing, data_converter
from switchyard.common.shadow.bodies import PREFIX
from switchyard.common.shadow.spec import SHADOW_WORKFLOW, ShadowCase
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack

PII_EMAIL = "jane.roe@example.org"


def report(admin: httpx.Client, model: str) -> dict[str, Any]:
    r = admin.get(f"/v1/shadow/{model}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


COUNTS = ("samples", "compared", "candidate_failed")


def counts(admin: httpx.Client, model: str) -> dict[str, int]:
    """The report's counts for ``model`` now (other tests on this stack shadow it too, e.g. test_metrics)."""
    data = report(admin, model)["data"]
    return {k: data[0][k] if data else 0 for k in COUNTS}


def compared_rows(admin: httpx.Client, model: str, samples: int, before: dict[str, int], timeout_s: float = 180.0) -> dict[str, Any]:
    """The report's row once the shadow worker has finished ``samples`` more cases of ``model`` than
    ``before``, its counts made relative to ``before``."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = report(admin, model)["data"]
        if data and data[0]["samples"] >= before["samples"] + samples:
            return {**data[0], **{k: data[0][k] - before[k] for k in COUNTS}}  # type: ignore[no-any-return]
        got = data[0]["samples"] - before["samples"] if data else 0
        assert time.monotonic() < deadline, f"{model}: {got} of {samples} shadow cases finished in {timeout_s:.0f} s"
        time.sleep(0.5)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_report_needs_an_admin_key_and_a_known_model(stack: Stack, http: httpx.Client, admin: httpx.Client) -> None:
    no_key = httpx.get(f"{stack.ingress}/v1/shadow/{SHADOWED['vision']}", timeout=30)
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key", no_key.text
    not_admin = http.get(f"/v1/shadow/{SHADOWED['vision']}")
    assert not_admin.status_code == 403, not_admin.text
    unknown = admin.get("/v1/shadow/no-such-model")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found", unknown.text
    bad_since = admin.get(f"/v1/shadow/{SHADOWED['vision']}", params={"since": "2026-01-01T00:00:00"})
    assert bad_since.status_code == 422 and bad_since.json()["error"]["code"] == "invalid_window", bad_since.text
    # A model without a shadow has an empty report; the shipped models' shadows sample nothing here.
    plain = report(admin, "vision-classify-onnxruntime")
    assert (plain["candidate"], plain["data"]) == (None, [])


def test_vision_requests_are_compared_with_the_int8_candidate_over_rest_and_grpc(stack: Stack, admin: httpx.Client, auth: dict[str, str],
                                                                                 api_key: str) -> None:
    model, images = SHADOWED["vision"], sample_images()
    before, done_before, since = scrape(stack.cfg.api_metrics_port), counts(admin, model), datetime.now(UTC)
    rest = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    try:
        for name in ("china", "flower"):
            inp = httpclient.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([images[name]], dtype=object), binary_data=True)
            labels = rest.infer(model, [inp], headers=dict(auth)).as_numpy("labels")
            assert labels is not None and labels.shape[0] == 1
            ginp = grpcclient.InferInput("image", [1], "BYTES")
            ginp.set_data_from_numpy(np.array([images[name]], dtype=object))
            assert grpc.infer(model, [ginp], headers={"authorization": f"Bearer {api_key}"}).as_numpy("labels") is not None
    finally:
        rest.close()
        grpc.close()
    row = compared_rows(admin, model, 4, done_before)
    assert (row["candidate"], row["samples"], row["compared"], row["candidate_failed"]) == ("vision-classify-int8", 4, 4, 0), row
    # int8 EfficientNet-Lite0 keeps the fp32 model's top label on china.jpg (every request here and
    # test_metrics' one), and most of its top 5.
    assert row["top1_agreement"] == 1.0, row
    assert 0.6 <= row["topk_overlap"] <= 1.0, row
    assert row["text_similarity"] is None and row["primary_p50_ms"] > 0 and row["candidate_p50_ms"] > 0, row
    rep = report(admin, model)
    assert (rep["domain"], rep["candidate"], rep["sample_rate"], rep["comparison"]) == ("vision", "vision-classify-int8", 1.0, "topk")
    after = scrape(stack.cfg.api_metrics_port)
    assert sample(after, "switchyard_shadow_cases_total", model=model, outcome="mirrored") - \
        sample(before, "switchyard_shadow_cases_total", model=model, outcome="mirrored") == 4
    shadow = scrape(stack.cfg.worker_shadow_metrics_port)
    assert sample(shadow, "switchyard_shadow_comparisons_total", model=model, candidate="vision-classify-int8", outcome="compared") >= 4
    assert sample(shadow, "switchyard_shadow_agreement_ratio_count", model=model, candidate="vision-classify-int8", metric="top1") >= 4
    # The images did not travel through Temporal: each case's workflow input names its request
    # (protocol, headers) and the body waited in Redis (sealed), dropped once compared.
    cases = [c for c in asyncio.run(_shadow_cases_since(stack, since)) if c.model == model]
    assert {c.v2.protocol for c in cases if c.v2} == {"rest", "grpc"} and len(cases) >= 4, cases
    assert all(c.v2 is not None and c.v2.body is None for c in cases), cases
    assert not asyncio.run(_bodies_left(stack, [c.case_id for c in cases]))


def test_recommendations_are_compared_with_the_second_ranker_version(admin: httpx.Client, http: httpx.Client) -> None:
    model = SHADOWED["recsys"]
    done_before = counts(admin, model)
    for user in (1, 2, 3):
        r = http.post("/v1/recommendations", json={"model": model, "user_id": user, "k": 10})
        assert r.status_code == 200, r.text
    row = compared_rows(admin, model, 3, done_before)
    assert (row["candidate"], row["compared"], row["candidate_failed"]) == ("recsys-rank-v2", 3, 0), row
    # Two rankers over the same retrieved candidates: related lists, not the same one.
    assert 0.0 < row["topk_overlap"] <= 1.0 and 0.0 <= row["top1_agreement"] <= 1.0, row


async def _temporal(stack: Stack) -> Client:
    ring = KeyRing.parse(json.loads(stack.payload_env["SWITCHYARD_PAYLOAD_KEYS"]), stack.payload_env["SWITCHYARD_PAYLOAD_KEY_ID"])
    return await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}", namespace="default", data_converter=data_converter(ring))


async def _shadow_case(stack: Stack, job_id: str, client: Client | None = None) -> ShadowCase:
    """The case as its workflow got it (the started event's input, decrypted)."""
    client = client or await _temporal(stack)
    history = await client.get_workflow_handle(f"shadow-{job_id}").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [case] = await client.data_converter.decode(started.input.payloads, [ShadowCase])
    assert isinstance(case, ShadowCase)
    return case


async def _shadow_cases_since(stack: Stack, since: datetime) -> list[ShadowCase]:
    client = await _temporal(stack)
    query = f"WorkflowType = '{SHADOW_WORKFLOW}' AND StartTime >= '{since.isoformat()}'"
    return [await _shadow_case(stack, wf.id.removeprefix("shadow-"), client) async for wf in client.list_workflows(query)]


async def _bodies_left(stack: Stack, case_ids: list[str]) -> int:
    redis = Redis.from_url(stack.cfg.redis_url)
    try:
        return int(await redis.exists(*(PREFIX + c for c in case_ids)))
    finally:
        await redis.aclose()


def test_llm_completions_are_compared_with_vllm_under_the_same_pii_policy(stack: Stack, admin: httpx.Client, http: httpx.Client) -> None:
    model = SHADOWED["llm"]
    done_before = counts(admin, model)
    prompt = f"Write one short sentence to Jane Roe at {PII_EMAIL} about the weather."
    r = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    job_id, usage = r.headers["x-switchyard-job-id"], r.json()["usage"]
    row = compared_rows(admin, model, 1, done_before, timeout_s=240)
    assert (row["candidate"], row["compared"], row["candidate_failed"]) == ("smollm2-135m-instruct-vllm", 1, 0), row
    assert 0.0 <= row["text_similarity"] <= 1.0, row
    assert row["primary_tokens_mean"] == usage["completion_tokens"] and row["candidate_tokens_mean"] >= 1, row
    assert row["primary_ttft_p50_ms"] > 0 and row["candidate_ttft_p50_ms"] > 0, row
    # The candidate got what the primary engine got: the prompt with its PII redacted (policy `redact`).
    case = asyncio.run(_shadow_case(stack, job_id))
    assert case.llm is not None
    sent = json.dumps(case.llm.input)
    assert PII_EMAIL not in sent and "<EMAIL_ADDRESS>" in sent, sent
    assert case.candidate_spec is not None and case.candidate_spec["endpoints"][0]["engine"] == "vllm"

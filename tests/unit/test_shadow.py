"""Shadow deployment's parts (docs/shadow.md): the catalog's ``shadow`` field and its checks, the
comparisons, V2 answers read in every form the workers send them, the platform-wide budget on the
real Redis, a V2 case's request body kept aside there (sealed), and what a mirrored case is
dropped for. The whole lane runs against the real stack in
tests/integration/test_shadow.py."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import yaml  # type: ignore[import-untyped]
from redis.asyncio import Redis

from switchyard.common.catalog import CatalogError, build_catalog
from switchyard.common.metrics import SHADOW_CASES
from switchyard.common.model_registry import ModelEntry
from switchyard.common.payload_codec import KeyRing, PayloadKeyError
from switchyard.common.shadow.bodies import PREFIX, ShadowBodies
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.common.shadow.mirror import send
from switchyard.common.shadow.spec import LlmCall, ShadowCase, V2Call
from switchyard.common.v2 import grpc_codec
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.rest import encode_response
from switchyard.common.v2.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from switchyard.worker_shadow.answers import outputs, ranked
from switchyard.worker_shadow.compare import rouge_l, topk_agreement

REDIS_URL = os.environ.get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")
KEYS = KeyRing({"k1": os.urandom(32)}, "k1")
SHIPPED = Path(__file__).resolve().parents[2] / "infra" / "catalog" / "models.yaml"

ENDPOINT = {"engine": "llamacpp", "url": "http://127.0.0.1:1", "engine_model": "m"}
STEPS = [{"name": "decode", "op": "preprocess", "inputs": ["image"], "outputs": ["pixels"]},
         {"name": "classify", "op": "infer", "backend": "b", "inputs": ["pixels"], "outputs": ["logits"]},
         {"name": "top", "op": "topk", "inputs": ["logits"], "outputs": ["labels", "scores"]}]


def chat(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "domain": "llm", "kind": "chat", "endpoints": [ENDPOINT], **kw}


def classifier(name: str, image_input: str = "image", **kw: Any) -> dict[str, Any]:
    steps = [dict(STEPS[0], inputs=[image_input]), *STEPS[1:]]
    return {"name": name, "domain": "vision", "kind": "classifier", "inputs": [{"name": image_input, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}, {"name": "scores", "datatype": "FP32", "shape": [-1, -1]}],
            "steps": steps, **kw}


def catalog(tmp_path: Path, models: list[dict[str, Any]]) -> Any:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"backends": {"b": {"engine": "triton", "model": "x"}}, "models": models}))
    return build_catalog([path], {})


# ---------------------------------------------------------------- catalog


def test_the_shipped_catalog_shadows_a_model_of_every_domain() -> None:
    cat = build_catalog([SHIPPED], {"SWITCHYARD_VLLM_ENABLED": "true"})
    models: list[ModelEntry | V2Model] = [*cat.registry.models, *cat.v2.models]
    shadows = {m.name: (m.shadow.candidate, m.shadow.sample_rate) for m in models if m.shadow}
    assert shadows == {"smollm2-135m-instruct": ("smollm2-135m-instruct-vllm", 0.05), "vision-classify": ("vision-classify-int8", 0.05),
                       "recsys-rank": ("recsys-rank-v2", 0.05)}
    # The sample rate is the environment's where it sets one; a candidate switched off switches the shadow off.
    cat = build_catalog([SHIPPED], {"SWITCHYARD_VLLM_ENABLED": "false", "SWITCHYARD_SHADOW_SAMPLE_RATE": "0.5"})
    llm = cat.registry.get("smollm2-135m-instruct")
    vision = cat.v2.get("vision-classify")
    assert llm is not None and llm.shadow is None
    assert vision is not None and vision.shadow is not None and vision.shadow.sample_rate == 0.5
    # The job snapshot carries the shadow (the LLM workflow samples from it).
    snapshot = cat.snapshot("vision-classify")
    assert snapshot is not None and snapshot["v2"]["shadow"] == {"candidate": "vision-classify-int8", "sample_rate": 0.5, "compare": None, "canary": None}


@pytest.mark.parametrize(("models", "message"), [
    ([chat("a", shadow={"candidate": "nope", "sample_rate": 0.1})], "model 'a', field 'shadow.candidate': no model 'nope' in the catalog"),
    ([chat("a", shadow={"candidate": "a", "sample_rate": 0.1})], "a model cannot be its own shadow candidate"),
    ([chat("a", shadow={"candidate": "see", "sample_rate": 0.1}), classifier("see")], "'see' is a vision classifier model; 'a' is a llm chat one"),
    ([classifier("see", shadow={"candidate": "other", "sample_rate": 1}), classifier("other", image_input="picture")],
     "'other' takes other inputs than 'see'"),
    ([chat("a", kind="embedding", shadow={"candidate": "b", "sample_rate": 0.1}), chat("b", kind="embedding")], "only chat models are shadowed"),
    ([chat("a", shadow={"candidate": "b", "sample_rate": 0.1, "compare": "topk"}), chat("b")], "field 'shadow.compare': llm models are compared by 'rouge_l'"),
    ([chat("a", shadow={"candidate": "b", "sample_rate": 1.5}), chat("b")], "shadow.sample_rate"),
    ([chat("a", shadow={"candidate": "b", "rate": 0.5}), chat("b")], "shadow"),
])
def test_a_bad_shadow_is_refused_naming_the_model_and_field(tmp_path: Path, models: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(CatalogError) as e:
        catalog(tmp_path, models)
    assert message in str(e.value)
    assert "catalog.yaml" in str(e.value)


# ---------------------------------------------------------------- comparisons


def test_rouge_l_is_the_f1_of_the_longest_common_word_subsequence() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS "the cat on the mat" = 5 words of 6 in each: P = R = F1 = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS 2 ("a c"): P = 2/2, R = 2/4, F1 = 2PR/(P+R) = 2/3.
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("x y", "z") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0


def test_topk_agreement_is_per_row_then_averaged() -> None:
    top1, overlap = topk_agreement([["a", "b", "c"], ["x", "y", "z"]], [["a", "c", "d"], ["y", "x", "z"]], 3)
    assert top1 == 0.5  # row 1 agrees on "a", row 2 does not
    assert overlap == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError):
        topk_agreement([["a"]], [], 1)


# ---------------------------------------------------------------- V2 answers, in every form


LABELS = np.array([["daisy", "bee", "pot"], ["palace", "church", "dome"]], dtype=object)
SCORES = np.array([[0.9, 0.05, 0.01], [0.5, 0.2, 0.1]], dtype=np.float32)
ANSWER = InferResponse(model="m", version="1", outputs=[Tensor("labels", "BYTES", LABELS), Tensor("scores", "FP32", SCORES)])


def rest_answer(binary: bool) -> tuple[bytes, dict[str, str]]:
    req = InferRequest(model="m", inputs=[], outputs=[RequestedOutput(name="labels", binary=binary), RequestedOutput(name="scores", binary=binary)])
    body, headers = encode_response(ANSWER, req)
    return body, {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize("form", ["json", "binary", "grpc"])
def test_answers_are_read_in_every_form_the_workers_send(form: str) -> None:
    if form == "grpc":
        out = outputs("grpc", grpc_codec.response_to_pb(ANSWER).SerializeToString(), {})
    else:
        body, headers = rest_answer(form == "binary")
        assert ("inference-header-content-length" in headers) == (form == "binary")
        out = outputs("rest", body, headers)
    assert ranked(out, 5) == [["daisy", "bee", "pot"], ["palace", "church", "dome"]]
    np.testing.assert_allclose(out["scores"], SCORES)


def test_a_bare_network_is_ranked_by_its_scores() -> None:
    logits = InferResponse(model="m", version="1", outputs=[Tensor("logits", "FP32", np.array([[0.1, 3.0, 2.0, -1.0]], dtype=np.float32))])
    body, headers = encode_response(logits, InferRequest(model="m", inputs=[]))
    assert ranked(outputs("rest", body, headers), 2) == [[1, 2]]


def test_recsys_items_are_ranked_in_answer_order() -> None:
    items = InferResponse(model="r", version="1", outputs=[Tensor("item_ids", "INT64", np.array([[7, 3, 9]], dtype=np.int64))])
    body, headers = encode_response(items, InferRequest(model="r", inputs=[]))
    assert ranked(outputs("rest", body, headers), 10) == [[7, 3, 9]]


# ---------------------------------------------------------------- the budget (real Redis)


@pytest_asyncio.fixture
async def budget() -> AsyncIterator[ShadowBudget]:
    redis = Redis.from_url(REDIS_URL)
    b = ShadowBudget(redis, limit=2, hold_s=0.5, key=f"test:shadow:{uuid.uuid4().hex}")
    yield b
    await redis.delete(b.key)
    await redis.aclose()


@pytest.mark.asyncio
async def test_the_budget_holds_at_most_its_limit_and_frees_places(budget: ShadowBudget) -> None:
    assert await budget.take("a") and await budget.take("b")
    assert not await budget.take("c")  # full
    assert await budget.held() == 2
    await budget.give_back("a")
    assert await budget.take("c")
    await asyncio.sleep(0.6)  # places never given back (a worker killed mid-case) lapse
    assert await budget.held() == 0
    assert await budget.take("d")


def case(model: str, body: bytes = b"{}") -> ShadowCase:
    return ShadowCase(case_id=uuid.uuid4().hex, domain="vision", model=model, candidate="c", primary_ms=1.0,
                      v2=V2Call(protocol="rest", body=body), v2_answer=b"{}")


def counted(model: str, outcome: str) -> float:
    return SHADOW_CASES.labels(model=model, outcome=outcome)._value.get()  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_a_case_over_the_budget_or_the_size_limit_is_dropped_and_counted(budget: ShadowBudget) -> None:
    model = f"m-{uuid.uuid4().hex[:6]}"
    client: Any = None  # never reached: a dropped case starts no workflow
    bodies = ShadowBodies(budget.redis, KEYS)
    assert await send(client, budget, case(model, b"x" * 5000), 4096, bodies) == "dropped_too_large"
    assert await budget.held() == 0  # too large: no place taken
    await budget.take("x"), await budget.take("y")
    dropped = case(model)
    assert await send(client, budget, dropped, 4096, bodies) == "dropped_backlog"
    assert (counted(model, "dropped_too_large"), counted(model, "dropped_backlog")) == (1, 1)
    assert await bodies.get(dropped.case_id) is None  # a dropped case keeps no body aside
    with pytest.raises(ValueError, match="body store"):
        await send(client, budget, case(model), 4096)


@pytest.mark.asyncio
async def test_a_v2_body_waits_in_redis_sealed_and_bound_to_its_case(budget: ShadowBudget) -> None:
    redis, body = budget.redis, b"\xff\xd8 jpeg bytes " + uuid.uuid4().bytes
    bodies, case_id = ShadowBodies(redis, KEYS, ttl_s=30), uuid.uuid4().hex
    await bodies.put(case_id, body)
    stored = await redis.get(PREFIX + case_id)
    assert stored is not None and body not in stored  # sealed, not the image
    assert 0 < await redis.pttl(PREFIX + case_id) <= 30_000  # lapses with the case
    assert await bodies.get(case_id) == body
    # Bound to its case: the same sealed bytes under another case id do not open.
    other = uuid.uuid4().hex
    await redis.set(PREFIX + other, stored, px=30_000)
    with pytest.raises(PayloadKeyError):
        await bodies.get(other)
    await bodies.drop(case_id)
    await bodies.drop(other)
    assert await bodies.get(case_id) is None


def test_an_llm_case_counts_its_text_toward_the_size_limit() -> None:
    from switchyard.common.shadow.mirror import case_bytes
    c = ShadowCase(case_id="x", domain="llm", model="m", candidate="c", primary_ms=1.0,
                   llm=LlmCall(input={"prompt": "p" * 100, "max_tokens": 8}, text="é" * 10, completion_tokens=10))
    assert case_bytes(c) == 20 + len(str("p" * 100)) + len("8")
    assert json.loads(c.model_dump_json())["llm"]["text"] == "é" * 10


def test_a_case_with_binary_tensors_survives_the_temporal_payload_converter() -> None:
    """Binary V2 bodies and protobuf are not UTF-8: they travel base64 (the API once failed every
    binary case with PydanticSerializationError)."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    raw = bytes(range(256))
    c = ShadowCase(case_id="x", domain="vision", model="m", candidate="c", primary_ms=1.0, v2=V2Call(protocol="grpc", body=raw), v2_answer=raw)
    [payload] = pydantic_data_converter.payload_converter.to_payloads([c])
    [back] = pydantic_data_converter.payload_converter.from_payloads([payload], [ShadowCase])
    assert back == c

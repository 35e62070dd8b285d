"""Traces, read back as a collector would receive them: one job's spans form one trace, from the
client's ``traceparent`` through Nginx, the API, Temporal, the worker and the engine.

Every process of the test stack exports over OTLP/HTTP to ``otlp`` (otlp_receiver.py, a stand-in
for an OpenTelemetry Collector speaking the real protocol; no collector installs here): the API,
the workers, vLLM and Triton (both with their own OpenTelemetry support, continuing our context).
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from otlp_receiver import OtlpReceiver, ReceivedSpan  # pants: no-infer-dep (a test util beside conftest.py)
from tritonclient.utils import InferenceServerException

from switchyard.devstack.client import JobClient, llm_job
from switchyard.devstack.models import sample_images
from switchyard.devstack.stack import Stack

API, WORKER_LLM, WORKER_VISION = "switchyard-api", "switchyard-worker-llm", "switchyard-worker-vision"
VLLM_MODEL = "smollm2-135m-instruct-vllm"
LLAMACPP_MODEL = "smollm2-135m-instruct"


def client_context() -> tuple[str, str, str]:
    """(trace id, span id, traceparent) of a client's own span."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def matching(spans: list[ReceivedSpan], service: str | None = None, kind: str | None = None, name: str | None = None,
             parent: str | None = None, **attributes: Any) -> list[ReceivedSpan]:
    return [s for s in spans if (service is None or s.service == service) and (kind is None or s.kind == kind)
            and (name is None or s.name == name) and (parent is None or s.parent_span_id == parent)
            and all(s.attributes.get(k.replace("__", ".")) == v for k, v in attributes.items())]


def one(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = matching(spans, **where)
    assert len(found) == 1, f"expected one span with {where}, got {len(found)} in:\n" + "\n".join(
        f"  {s.service} {s.kind} {s.name!r} {s.span_id}<-{s.parent_span_id} {s.attributes}" for s in spans)
    return found[0]


def wait_for_chain(otlp: OtlpReceiver, trace_id: str, *steps: dict[str, Any]) -> list[ReceivedSpan]:
    """The trace's spans once each of ``steps`` (``matching`` filters) has arrived."""

    def done(spans: list[ReceivedSpan]) -> bool:
        return all(matching(spans, **step) for step in steps)

    return otlp.wait_for(trace_id, done)


def no_secrets(spans: list[ReceivedSpan], *texts: str) -> None:
    """Neither prompt text nor keys in any attribute of Switchyard's spans."""
    for s in spans:
        if s.service.startswith("switchyard-"):
            for t in texts:
                assert t not in repr(s.attributes) and t not in s.name, f"{t!r} leaked into span {s.name}"


def test_llm_job_is_one_trace_from_client_to_engine(stack: Stack, client: JobClient, otlp: OtlpReceiver, api_key: str) -> None:
    trace_id, client_span, tp = client_context()
    prompt = f"Name a colour. ({secrets.token_hex(4)})"
    job_id = client.submit({**llm_job(prompt, max_tokens=4), "model": VLLM_MODEL}, headers={"traceparent": tp})
    list(client.events(job_id))
    assert client.get(job_id)["status"] == "succeeded"
    spans = wait_for_chain(otlp, trace_id, {"service": API, "kind": "SERVER"}, {"name": "StartWorkflow:LlmJob"}, {"name": "RunWorkflow:LlmJob"},
                           {"name": "RunActivity:llm.generate"}, {"service": WORKER_LLM, "kind": "CLIENT", "switchyard__engine": "vllm"},
                           {"service": "vllm"})

    # Client → Nginx → API: the request's span continues the client's.
    request = one(spans, service=API, kind="SERVER", parent=client_span)
    assert request.name == "POST /v1/jobs"
    assert request.attributes["http.route"] == "/v1/jobs" and request.attributes["http.response.status_code"] == 202
    assert request.attributes["switchyard.model"] == VLLM_MODEL and request.attributes["switchyard.job_id"] == job_id
    # API → Temporal → worker: the outbox's workflow start belongs to the request (it may run after
    # the 202). The workflow's spans are markers below the start (workflow code replays: the SDK's
    # interceptor cannot hold a span open across it), the activity's start among them.
    start = one(spans, service=API, name="StartWorkflow:LlmJob", parent=request.span_id)
    one(spans, service=WORKER_LLM, name="RunWorkflow:LlmJob", parent=start.span_id)
    start_activity = one(spans, service=WORKER_LLM, name="StartActivity:llm.generate", parent=start.span_id)
    activity = one(spans, service=WORKER_LLM, name="RunActivity:llm.generate", parent=start_activity.span_id)
    # Worker → engine: one CLIENT span per endpoint attempt, with the engine's address...
    engine = one(spans, service=WORKER_LLM, kind="CLIENT", parent=activity.span_id)
    assert (engine.attributes["server.address"], engine.attributes["server.port"]) == ("127.0.0.1", stack.cfg.vllm_port)
    assert engine.attributes["switchyard.engine"] == "vllm" and engine.attributes["gen_ai.request.model"] == VLLM_MODEL
    assert engine.attributes["gen_ai.usage.output_tokens"] > 0 and not engine.error
    # ...whose traceparent the engine continued (vLLM's own span).
    assert matching(spans, service="vllm", parent=engine.span_id), "vLLM's span is not a child of the worker's engine call"
    assert {API, WORKER_LLM, "vllm"} <= {s.service for s in spans}
    no_secrets(spans, prompt, api_key)


def test_v2_rest_infer_is_one_trace_api_worker_triton(stack: Stack, otlp: OtlpReceiver, auth: dict[str, str], api_key: str) -> None:
    trace_id, client_span, tp = client_context()
    c = httpclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.http_port}", network_timeout=60)
    try:
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([sample_images()["flower"]], dtype=object), binary_data=True)
        result = c.infer("vision-classify", [inp], headers={**auth, "traceparent": tp})
    finally:
        c.close()
    assert result.as_numpy("labels")[0][0].decode() == "daisy"
    spans = wait_for_chain(otlp, trace_id, {"service": API, "kind": "SERVER"}, {"service": API, "kind": "CLIENT"}, {"service": WORKER_VISION, "kind": "SERVER"},
                           {"service": WORKER_VISION, "kind": "CLIENT"}, {"service": "triton"})

    request = one(spans, service=API, kind="SERVER", parent=client_span)
    assert request.attributes["http.route"] == "/v2/models/{model}/infer" and request.attributes["http.response.status_code"] == 200
    assert request.attributes["switchyard.model"] == "vision-classify"
    hop = one(spans, service=API, kind="CLIENT", parent=request.span_id)
    assert hop.attributes["server.port"] == stack.cfg.vision_http_port
    served = one(spans, service=WORKER_VISION, kind="SERVER", parent=hop.span_id)
    assert served.attributes["http.route"] == "/v2/models/{model}/infer" and served.attributes["http.response.status_code"] == 200
    triton = one(spans, service=WORKER_VISION, kind="CLIENT", parent=served.span_id)
    assert (triton.attributes["server.address"], triton.attributes["server.port"]) == ("127.0.0.1", stack.cfg.triton_http_port)
    assert triton.attributes["switchyard.engine"] == "triton"
    assert matching(spans, service="triton", parent=triton.span_id), "Triton's span is not a child of the worker's call"
    assert {API, WORKER_VISION, "triton"} <= {s.service for s in spans}
    no_secrets(spans, api_key)


def test_v2_grpc_infer_continues_the_callers_metadata(stack: Stack, otlp: OtlpReceiver, api_key: str) -> None:
    trace_id, client_span, tp = client_context()
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    try:
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([sample_images()["china"]], dtype=object))
        c.infer("vision-classify-onnxruntime", [inp], headers={"authorization": f"Bearer {api_key}", "traceparent": tp})
    finally:
        c.close()
    spans = wait_for_chain(otlp, trace_id, {"service": API, "kind": "SERVER"}, {"service": API, "kind": "CLIENT"}, {"service": WORKER_VISION, "kind": "SERVER"},
                           {"service": WORKER_VISION, "kind": "INTERNAL"})
    call = one(spans, service=API, kind="SERVER", parent=client_span)
    assert call.name == "inference.GRPCInferenceService/ModelInfer"
    assert call.attributes["rpc.grpc.status_code"] == 0 and call.attributes["switchyard.model"] == "vision-classify-onnxruntime"
    hop = one(spans, service=API, kind="CLIENT", parent=call.span_id)
    tunnel = one(spans, service=WORKER_VISION, kind="SERVER", parent=hop.span_id)
    assert tunnel.attributes["http.route"] == "/v2/grpc/{method}"
    backend = one(spans, service=WORKER_VISION, kind="INTERNAL", parent=tunnel.span_id)
    assert backend.attributes["switchyard.engine"] == "onnxruntime"


def test_grpc_client_errors_are_not_server_failures(stack: Stack, otlp: OtlpReceiver, api_key: str) -> None:
    trace_id, client_span, tp = client_context()
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.cfg.grpc_port}")
    try:
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"x"], dtype=object))
        with pytest.raises(InferenceServerException) as e:
            c.infer("no-such-model", [inp], headers={"authorization": f"Bearer {api_key}", "traceparent": tp})
    finally:
        c.close()
    assert e.value.status() == "StatusCode.NOT_FOUND"
    spans = wait_for_chain(otlp, trace_id, {"service": API, "kind": "SERVER"})
    call = one(spans, service=API, kind="SERVER", parent=client_span)
    assert call.attributes["rpc.grpc.status_code"] == 5 and not call.error  # NOT_FOUND: the caller's mistake
    assert "switchyard.model" not in call.attributes  # unknown names never become attributes


def test_a_request_without_trace_context_gets_a_fresh_trace(stack: Stack, client: JobClient, otlp: OtlpReceiver) -> None:
    job_id = client.submit(llm_job(max_tokens=4))
    list(client.events(job_id))
    assert client.get(job_id)["status"] == "succeeded"

    # The request span carries the job's id.
    (request,) = matching(otlp.wait_for(None, lambda spans: bool(matching(spans, switchyard__job_id=job_id))), switchyard__job_id=job_id)
    assert request.service == API and request.kind == "SERVER" and request.parent_span_id == ""  # a root: the API started the trace
    spans = wait_for_chain(otlp, request.trace_id, {"name": "RunActivity:llm.generate"}, {"service": WORKER_LLM, "kind": "CLIENT", "switchyard__engine": "llamacpp"})
    activity = one(spans, service=WORKER_LLM, name="RunActivity:llm.generate")
    engine = one(spans, service=WORKER_LLM, kind="CLIENT", switchyard__engine="llamacpp", parent=activity.span_id)
    assert engine.attributes["server.port"] == stack.cfg.engine_port


@pytest.mark.parametrize("key", [None, "sk-not-a-real-key"])
def test_refused_requests_are_traced_as_client_errors(stack: Stack, otlp: OtlpReceiver, key: str | None) -> None:
    trace_id, client_span, tp = client_context()
    headers = {"traceparent": tp, **({"Authorization": f"Bearer {key}"} if key else {})}
    r = httpx.post(f"{stack.ingress}/v1/jobs", json=llm_job(max_tokens=4), headers=headers, timeout=30)
    assert r.status_code == 401
    spans = wait_for_chain(otlp, trace_id, {"service": API, "kind": "SERVER"})
    request = one(spans, service=API, kind="SERVER", parent=client_span)
    assert request.attributes["http.response.status_code"] == 401 and not request.error  # the client's error, not the server's
    if key:
        no_secrets(spans, key)

"""switchyard.common.tracing: nothing is installed without an endpoint; with a provider, the ASGI
middleware continues a client's trace and names the route (real SDK, in-memory exporter)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from temporalio.service import RPCError, RPCStatusCode

from switchyard.common import tracing
from switchyard.common.settings import CommonSettings

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"



@pytest.fixture(autouse=True)
def _no_env_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SWITCHYARD_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_without_an_endpoint_nothing_is_installed() -> None:
    assert tracing.setup_tracing(CommonSettings(), "switchyard-test") is False
    assert not tracing.enabled()
    # The API's default: OpenTelemetry's proxy provider, not the SDK's.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert tracing.temporal_interceptors() == []
    assert tracing.httpx_event_hooks() == {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    assert tracing.traced_asgi(app) is app  # not even a wrapper
    with tracing.client_span("call", "http://127.0.0.1:1") as span:
        assert span is None
    headers: dict[str, str] = {}
    with trace.get_tracer("t").start_as_current_span("outer"):
        tracing.inject(headers)
    assert headers == {}


def test_endpoint_settings_switchyard_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    s = CommonSettings()
    assert (s.otlp_endpoint or s.otel_exporter_otlp_endpoint) == "http://collector:4318"
    monkeypatch.setenv("SWITCHYARD_OTLP_ENDPOINT", "http://mine:4318/")
    s = CommonSettings()
    assert (s.otlp_endpoint or s.otel_exporter_otlp_endpoint) == "http://mine:4318/"
    assert tracing.traces_url(s.otlp_endpoint) == "http://mine:4318/v1/traces"
    assert tracing.traces_url("http://x:4318/v1/traces") == "http://x:4318/v1/traces"


def test_server_address_of_engine_urls() -> None:
    assert tracing.server_address("http://127.0.0.1:8093") == {"server.address": "127.0.0.1", "server.port": 8093, "url.full": "http://127.0.0.1:8093"}
    assert tracing.server_address("127.0.0.1:8100")["server.port"] == 8100
    # Credentials in a URL never reach a span.
    assert tracing.server_address("https://user:secret@engine.internal/v1")["url.full"] == "https://engine.internal:443/v1"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Traces on with a local provider (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def _app() -> Starlette:
    async def job(request: Request) -> Response:
        headers: dict[str, str] = {}
        tracing.inject(headers)  # what a downstream call would carry
        tracing.annotate(**{"switchyard.model": "m"})
        return PlainTextResponse(headers.get("traceparent", ""), status_code=202)

    async def broken(request: Request) -> Response:
        return PlainTextResponse("no", status_code=503)

    return Starlette(routes=[Route("/v1/jobs/{job_id}", job, methods=["POST"]), Route("/broken", broken)])


async def _call(app: object, path: str, headers: dict[str, str], method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:  # type: ignore[arg-type]
        return await c.request(method, path, headers=headers)


@pytest.mark.asyncio
async def test_request_span_continues_the_clients_trace(spans: InMemorySpanExporter) -> None:
    r = await _call(tracing.traced_asgi(_app()), "/v1/jobs/123", {"traceparent": TRACEPARENT, "authorization": "Bearer sk-secret"}, "POST")
    (span,) = spans.get_finished_spans()
    ctx = span.get_span_context()
    assert ctx is not None
    assert format(ctx.trace_id, "032x") == CLIENT_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CLIENT_SPAN
    assert span.kind == trace.SpanKind.SERVER and span.name == "POST /v1/jobs/{job_id}"
    assert dict(span.attributes or {}) == {"http.request.method": "POST", "http.route": "/v1/jobs/{job_id}", "http.response.status_code": 202,
                                           "switchyard.model": "m"}
    # A downstream call made while serving carries the request span as its parent.
    assert r.text == f"00-{CLIENT_TRACE}-{format(ctx.span_id, '016x')}-01"


@pytest.mark.asyncio
async def test_a_request_without_context_starts_a_trace_and_5xx_is_an_error(spans: InMemorySpanExporter) -> None:
    await _call(tracing.traced_asgi(_app()), "/broken", {})
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code == trace.StatusCode.ERROR and (span.attributes or {})["http.response.status_code"] == 503


@pytest.mark.asyncio
async def test_fast_path_routes_are_named_by_template(spans: InMemorySpanExporter) -> None:
    async def fast(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("{}")(scope, receive, send)

    await _call(tracing.traced_asgi(fast), "/v2/models/some-model/versions/2/infer", {}, "POST")
    await _call(tracing.traced_asgi(fast), "/v2/grpc/ModelInfer", {}, "POST")
    await _call(tracing.traced_asgi(fast), "/v2/other/thing", {}, "GET")
    await _call(tracing.traced_asgi(fast), "/v2/health/ready", {"traceparent": TRACEPARENT})  # probes: no span
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["POST /v2/models/{model}/versions/{version}/infer", "POST /v2/grpc/{method}", "GET"]


@pytest.mark.asyncio
async def test_the_middleware_passes_through_when_traces_are_off() -> None:
    r = await _call(tracing.TraceRequests(_app()), "/v1/jobs/1", {"traceparent": TRACEPARENT}, "POST")
    assert r.status_code == 202 and r.text == ""  # no span, nothing injected


class _Bus:
    redis = None

    async def exists(self, job_id: str) -> bool:
        return True


class _Store:
    def __init__(self, job: Any) -> None:
        self.job, self.dispatched = job, False

    async def undispatched(self, grace_s: float, limit: int) -> list[Any]:
        return [] if self.dispatched else [self.job]

    async def mark_dispatched(self, job_id: uuid.UUID) -> None:
        self.dispatched = True


class _Temporal:
    """Refuses the first start (Temporal unreachable), records the trace each start ran in."""

    def __init__(self) -> None:
        self.traces: list[str] = []

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.traces.append(format(trace.get_current_span().get_span_context().trace_id, "032x"))
        if len(self.traces) == 1:
            raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")


@pytest.mark.asyncio
async def test_a_dispatch_retried_by_the_sweeper_stays_in_the_requests_trace(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard.api.jobs import dispatch

    monkeypatch.setattr(dispatch, "spec_of", lambda job, keys: None)
    job = SimpleNamespace(id=uuid.uuid4(), domain="llm", model="m", priority=3, tenant="t")
    temporal = _Temporal()
    d = dispatch.Dispatcher(_Store(job), _Bus(), temporal, keys=None)  # type: ignore[arg-type]
    with tracing.server_span("POST /v1/jobs", {"traceparent": TRACEPARENT}, {}):
        d.dispatch_soon(job)  # type: ignore[arg-type]
    await asyncio.gather(*d._inflight)
    assert await d.sweep_once() == 1  # outside any request: the sweeper resumes the job's context
    assert temporal.traces == [CLIENT_TRACE, CLIENT_TRACE]
    (request,) = spans.get_finished_spans()
    assert (request.attributes or {})["switchyard.job_id"] == str(job.id)

"""OpenTelemetry traces: API → Temporal → worker → engine, exported over OTLP/HTTP.

``setup_tracing`` (each process's entry point, once) installs an SDK tracer provider exporting to
``SWITCHYARD_OTLP_ENDPOINT`` (or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``; Switchyard's wins when
both are set). Without an endpoint nothing is installed and every helper below is a no-op that
creates no span object: the realtime lane's hot path pays one global check per hop.

Context travels as W3C ``traceparent``/``tracestate``: in HTTP headers (clients' requests through
Nginx, API → worker on the realtime lane, worker → engine), gRPC metadata, and Temporal headers
(the SDK's ``TracingInterceptor`` on every client, inherited by its workers). Spans carry routes,
status codes, model names and engine addresses; never prompt text, never keys.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Interceptor

from switchyard.common.settings import CommonSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("switchyard.tracing")

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (``http://host:4318`` → ``.../v1/traces``),
    as the OTel spec derives it from ``OTEL_EXPORTER_OTLP_ENDPOINT``; a URL already ending in
    ``/v1/traces`` is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def setup_tracing(settings: CommonSettings, service_name: str) -> bool:
    """Install the process's tracer provider when an OTLP endpoint is configured; True if it did."""
    global _provider, _tracer
    endpoint = settings.otlp_endpoint or settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    # The SDK and exporter are imported only when used: a process without traces never loads them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": service_name, "service.namespace": "switchyard",
                                "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"})
    # Root spans are sampled at the configured ratio; a continued trace follows its parent's choice.
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer("switchyard")
    log.info("traces exported", extra={"fields": {"otlp_endpoint": traces_url(endpoint), "service": service_name,
                                                   "sample_ratio": settings.trace_sample_ratio}})
    return True


def shutdown_tracing() -> None:
    """Export what is still buffered (at process exit)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
        _provider, _tracer = None, trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


def temporal_interceptors() -> list[Interceptor]:
    """Temporal's tracing interceptor when traces are on (a Worker inherits its client's)."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(_tracer)]


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``."""
    if _provider is not None:
        propagate.inject(headers)


async def _inject_httpx(request: httpx.Request) -> None:
    propagate.inject(request.headers)


def httpx_event_hooks() -> dict[str, list[Any]]:
    """``event_hooks`` for an httpx.AsyncClient: every request carries the current trace context."""
    return {"request": [_inject_httpx]} if _provider is not None else {}


def annotate(**attributes: AttributeValue) -> None:
    """Set attributes on the current span (e.g. the model once a route resolved it)."""
    if _provider is not None:
        trace.get_current_span().set_attributes(attributes)


def server_address(url: str) -> dict[str, AttributeValue]:
    """``server.address``/``server.port``/``url.full`` of an engine's URL (``http://h:p/path`` or ``h:p``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return {"server.address": host, "server.port": port, "url.full": f"{parts.scheme}://{host}:{port}{parts.path}"}


def client_span(name: str, url: str, attributes: Mapping[str, AttributeValue] | None = None) -> AbstractContextManager[Span | None]:
    """A CLIENT span around a call to ``url`` (an engine, Triton, a worker); no span when traces are off."""
    if _provider is None:
        return nullcontext()
    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes={**server_address(url), **(attributes or {})})


def internal_span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> AbstractContextManager[Span | None]:
    """An INTERNAL span (in-process work such as an onnxruntime backend); none when traces are off."""
    if _provider is None:
        return nullcontext()
    return _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


@contextmanager
def server_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, AttributeValue], *, errors_from_exceptions: bool = True) -> Iterator[Span]:
    """A SERVER span continuing the trace context in ``carrier`` (lower-case header/metadata names).
    Only called when traces are on. ``errors_from_exceptions=False``: the caller sets the status
    (an exception may be a client's error, such as a gRPC abort with NOT_FOUND)."""
    with _tracer.start_as_current_span(name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes,
                                       record_exception=errors_from_exceptions, set_status_on_exception=errors_from_exceptions) as span:
        yield span


# gRPC codes that are the server's failures (as the alert SwitchyardHighErrorRate counts them).
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"})


def grpc_status(span: Span, code_name: str, code_value: int) -> None:
    """A gRPC call's status code on its span; server-side failures mark it failed."""
    span.set_attribute("rpc.grpc.status_code", code_value)
    if code_name in GRPC_SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", code_name)


def http_status(span: Span, status: int) -> None:
    """An HTTP answer's status on its span; 5xx marks the span failed (4xx are the client's)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))


# Routes of the plain-ASGI fast paths (switchyard.common.v2.asgi), which no router names.
_FAST_ROUTES = ((re.compile(r"^/v2/models/[^/]+/versions/[^/]+/infer$"), "/v2/models/{model}/versions/{version}/infer"),
                (re.compile(r"^/v2/models/[^/]+/infer$"), "/v2/models/{model}/infer"),
                (re.compile(r"^/v2/grpc/\w+$"), "/v2/grpc/{method}"))
_TRACE_HEADERS = (b"traceparent", b"tracestate")
# Health probes (every few seconds from each orchestrator and load balancer): no trace each.
UNTRACED_PATHS = frozenset({"/healthz", "/v2/health/live", "/v2/health/ready"})


def route_of(scope: Scope) -> str | None:
    """The route template that served ``scope`` (bounded: never the raw path)."""
    route = scope.get("route")
    if route is not None and isinstance(getattr(route, "path", None), str):
        return str(route.path)
    path = scope.get("path", "")
    for pattern, template in _FAST_ROUTES:
        if pattern.match(path):
            return template
    return None


class TraceRequests:
    """ASGI middleware: a SERVER span per HTTP request, continuing the client's ``traceparent``.
    Checks per request whether traces are on (the API sets them up in its lifespan, after building
    the app): off, it only passes the call on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _provider is None or scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
        method = scope["method"]
        with server_span(method, carrier, {"http.request.method": method}) as span:
            status = 0

            async def send_traced(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = route_of(scope)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status:
                    http_status(span, status)


def traced_asgi(app: ASGIApp) -> ASGIApp:
    """``app`` with a SERVER span per HTTP request when traces are on; ``app`` itself otherwise (no
    cost at all). Wrap the outermost app so the span covers every middleware and fast path."""
    return TraceRequests(app) if _provider is not None else app


# A trace context kept for later work (the outbox's retried dispatch).
TraceContext = Context


def current_context() -> TraceContext | None:
    """The current trace context, to resume later work in (None when traces are off)."""
    return otel_context.get_current() if _provider is not None else None


@contextmanager
def resumed(ctx: TraceContext | None) -> Iterator[None]:
    """Run the body in a context from ``current_context`` (no-op for None)."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)

"""A minimal OTLP/HTTP trace receiver: the integration tests' stand-in for an OpenTelemetry Collector.

No collector installs on the build machines (no Debian, PyPI or npm package ships one), so the tests
receive what the stack exports over the real protocol: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` (binary protobuf or OTLP/JSON, gzip or not), answered with an ``ExportTraceServiceResponse``, the way
a collector's OTLP/HTTP receiver does. Every process of the stack (the API, the workers, vLLM,
Triton) exports here; the tests read the spans back by trace id.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL...
    service: str  # the resource's service.name
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _hex_ids_to_base64(d: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex, where protobuf's JSON mapping expects base64."""
    if isinstance(d, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in _ID_FIELDS and isinstance(v, str) else _hex_ids_to_base64(v)
                for k, v in d.items()}
    if isinstance(d, list):
        return [_hex_ids_to_base64(x) for x in d]
    return d


_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


def decode(body: bytes, json_body: bool = False) -> list[ReceivedSpan]:
    """An ExportTraceServiceRequest, binary protobuf (Python and Go SDKs) or OTLP/JSON (Triton's C++ exporter)."""
    req = ExportTraceServiceRequest()
    if json_body:
        json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), req, ignore_unknown_fields=True)
    else:
        req.ParseFromString(body)
    out: list[ReceivedSpan] = []
    for rs in req.resource_spans:
        service = next((str(_value(a.value)) for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(ReceivedSpan(trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(), name=s.name,
                                        kind=KINDS.get(s.kind, str(s.kind)), service=service,
                                        attributes={a.key: _value(a.value) for a in s.attributes}, error=s.status.code == 2))
    return out


class OtlpReceiver:
    """Serves on 127.0.0.1 (a free port) in a thread; ``url`` is the collector base URL to configure."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                json_body = self.headers.get("Content-Type", "").startswith("application/json")
                try:
                    spans = decode(body, json_body)
                except Exception:  # not an ExportTraceServiceRequest
                    self.send_error(400)
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                    receiver.requests += 1
                # Answered in the request's encoding, as a collector does.
                answer = b"{}" if json_body else ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if json_body else "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait_for(self, trace_id: str | None, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The trace's spans (None: all spans) once ``done(spans)`` holds (exporters batch: spans arrive within seconds);
        what arrived by the deadline otherwise, for the caller's assertions to explain."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans(trace_id)
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)

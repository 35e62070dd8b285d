"""The request log (REQ-OPS-02): one record per request, built by one pure-ASGI middleware
(``RequestLog``), enriched by the handlers (``current()``), answered with ``X-Request-Id`` (and
``X-Switchyard-Overhead-Ms`` where the engine's time is known), counted in the API's metrics at
the response's end, and handed to a background writer (``RequestWriter``): one JSON log line on
``switchyard.requests`` and one row in ``requests`` per request, in batches, off the request path.

The V2 realtime lane has a P99 budget of 50 ms: on the request path this costs a record, a header
and a list append (no I/O). gRPC calls get the same record through ``GrpcCalls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.auth import Gatekeeper, Refused
from switchyard.common import metrics
from switchyard.common.db.store import RequestStore
from switchyard.common.keys import Principal
from switchyard.common.request_log import OVERHEAD_HEADER, REQUEST_ID_HEADER, RequestRecord, outcome_of, request_id
from switchyard.common.v2.asgi import INFER_PATH, Authorize

log = logging.getLogger("switchyard.api.request_log")
requests_log = logging.getLogger("switchyard.requests")

_CURRENT: ContextVar[RequestRecord | None] = ContextVar("switchyard_request", default=None)
_ID_HEADER = REQUEST_ID_HEADER.lower().encode()
_OVERHEAD_HEADER = OVERHEAD_HEADER.lower().encode()
_OPENAI = ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models")


def current() -> RequestRecord:
    """The record of the request being served (a throwaway outside one, so callers never check)."""
    rec = _CURRENT.get()
    return rec if rec is not None else RequestRecord("", "", "", "")


def current_or_none() -> RequestRecord | None:
    return _CURRENT.get()


def family_of(path: str) -> str | None:
    """The route family (docs/metrics.md); None: not logged (health, metrics, docs, unknown paths)."""
    if path.startswith("/v1/"):
        if path == "/v1/jobs" or path.startswith("/v1/jobs/"):
            return "jobs"
        if path.startswith(_OPENAI):
            return "openai"
        if path.startswith(("/v1/admin/", "/v1/usage")) or path == "/v1/admin":
            return "admin"  # the usage report is an accounting read, with key admin
        if path == "/v1/recommendations" or path.startswith("/v1/recsys/"):
            return "recsys"
        return None
    if path == "/v2" or path.startswith("/v2/"):
        return None if path.startswith("/v2/health/") else "v2_rest"
    return None


def _route_of(scope: Scope) -> str:
    """The route template (``/v1/jobs/{job_id}``), never the raw path; for a request refused before
    routing (401), the template it would have reached."""
    route = scope.get("route")
    if route is None:
        infer = INFER_PATH.match(scope["path"])
        if infer is not None:
            return "/v2/models/{model}/versions/{version}/infer" if infer[2] else "/v2/models/{model}/infer"
        app = scope.get("app")
        for r in getattr(getattr(app, "router", None), "routes", ()):
            if r.matches(scope)[0] is not Match.NONE:
                route = r
                break
    return str(getattr(route, "path_format", None) or getattr(route, "path", "") or "")


def note_principal(rec: RequestRecord, principal: Principal | None) -> None:
    if principal is not None and rec.tenant is None:
        rec.tenant, rec.key_id = principal.tenant, principal.key_id


class RequestWriter:
    """Writes finished records off the request path: every ``every_s`` (or at ``batch`` records), one
    log line each and one multi-row insert. A full queue drops (and warns): a request never waits."""

    def __init__(self, *, max_queue: int = 10_000, batch: int = 200, every_s: float = 0.2) -> None:
        self.max_queue, self.batch, self.every_s = max_queue, batch, every_s
        self.store: RequestStore | None = None
        self.dropped = 0
        self._queue: list[RequestRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    def put(self, rec: RequestRecord) -> None:
        if len(self._queue) >= self.max_queue:
            observe(rec)  # its metrics still count; its line and row are lost
            self.dropped += 1
            if time.monotonic() - self._warned_at > 10:
                self._warned_at = time.monotonic()
                log.warning("request log queue full; records dropped", extra={"fields": {"dropped": self.dropped, "max_queue": self.max_queue}})
            return
        self._queue.append(rec)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def start(self, store: RequestStore) -> None:
        self.store = store
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep writing whatever one batch hit (database restart...)
                log.exception("request log batch failed")

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:self.batch], self._queue[self.batch:]
            for rec in batch:
                observe(rec)
                requests_log.info("request", extra={"fields": rec.log_fields()})
            if self.store is not None:
                try:
                    await self.store.insert([rec.row() for rec in batch])
                except Exception as e:
                    log.warning("request rows not written", extra={"fields": {"rows": len(batch), "error": repr(e)}})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


def finish(rec: RequestRecord, writer: RequestWriter) -> None:
    """The end of a request: defaults, then the writer's queue (metrics, line and row follow there)."""
    if rec.total_ms is None:
        rec.total_ms = rec.elapsed_ms()
    if rec.overhead_ms is None:
        rec.overhead_ms = rec.overhead(rec.total_ms)
    rec.status = rec.status or "500"
    rec.outcome = rec.outcome or outcome_of(rec.status)
    writer.put(rec)


# Labelled metric children by label values (bounded sets): ``labels()`` costs more than the observation.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def observe(rec: RequestRecord) -> None:
    """The API's request metrics from a finished record (docs/metrics.md)."""
    _child(metrics.REQUESTS, rec.family, rec.model, rec.status).inc()
    _child(metrics.REQUEST_DURATION, rec.family, rec.model).observe((rec.total_ms or 0.0) / 1000)
    if rec.completion and rec.ttft_ms is not None:
        _child(metrics.TTFT, rec.model).observe(rec.ttft_ms / 1000)
    if rec.overhead_ms is not None:
        _child(metrics.PLATFORM_OVERHEAD, rec.family).observe(rec.overhead_ms / 1000)


class RequestLog:
    """ASGI middleware: the request's record and id (outside the V2 fast path, inside CatchUnexpected)."""

    def __init__(self, app: ASGIApp, writer: RequestWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        given = None
        for k, v in scope["headers"]:
            if k == _ID_HEADER:
                given = v.decode("latin-1")
                break
        rid = request_id(given)
        rid_raw = rid.encode()
        family = family_of(scope["path"])
        rec = RequestRecord(rid, family or "", "", scope.get("method") or "GET") if family is not None else None
        token = _CURRENT.set(rec)
        completed = [False]  # the answer's last byte went out

        async def send_with_id(message: Message) -> None:
            t = message["type"]
            if t == "http.response.start":
                headers = [*message.get("headers", ()), (_ID_HEADER, rid_raw)]
                if rec is not None:
                    rec.status = str(message["status"])
                    if rec.engine_ms is not None and not rec.stream:
                        rec.total_ms = rec.elapsed_ms()
                        rec.overhead_ms = rec.overhead(rec.total_ms)
                        headers.append((_OVERHEAD_HEADER, f"{rec.overhead_ms:.3f}".encode()))
                    if rec.completion and not rec.stream and message["status"] == 200:
                        rec.ttft_ms = rec.elapsed_ms()  # a whole answer: its first token is written now
                message = {**message, "headers": headers}
            elif t == "http.response.body":
                if rec is not None and not message.get("more_body", False):
                    rec.total_ms = rec.elapsed_ms()  # the last byte
                    completed[0] = True
            elif t == "websocket.accept" or t == "websocket.http.response.start":  # a handshake accepted, or refused with an answer
                message = {**message, "headers": [*message.get("headers", ()), (_ID_HEADER, rid_raw)]}
                if rec is not None:
                    rec.status = "101" if t == "websocket.accept" else str(message["status"])
            elif t == "websocket.close" and rec is not None and not rec.status:
                rec.status = "403"  # refused before the handshake completed
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _CURRENT.reset(token)
            if rec is not None:
                rec.route = rec.route or _route_of(scope)
                note_principal(rec, (scope.get("state") or {}).get("principal"))
                if kind == "websocket":
                    rec.total_ms = rec.elapsed_ms()  # the connection's life
                elif rec.status and not completed[0] and rec.outcome in (None, "succeeded"):
                    rec.outcome = "client_closed"  # a stream cut off: its record keeps what was sent
                finish(rec, self.writer)


def recording_authorize(gatekeeper: Gatekeeper) -> Authorize:
    """The V2 front ends' key check (``Gatekeeper.authorize_v2``), noting the caller on the record."""

    async def authorize(headers: Mapping[str, str]) -> None:
        rec = _CURRENT.get()
        if rec is not None:
            with contextlib.suppress(Refused):
                note_principal(rec, await gatekeeper.identify(headers))  # cached: authorize_v2 finds it again
        await gatekeeper.authorize_v2(headers)

    return authorize


class GrpcCall:
    """One gRPC call's record (switchyard.common.v2.grpc_frontend.CallRecord)."""

    def __init__(self, rec: RequestRecord, writer: RequestWriter) -> None:
        self.rec, self.writer = rec, writer
        self._token = _CURRENT.set(rec)

    def initial_metadata(self, ok: bool) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = ((REQUEST_ID_HEADER.lower(), self.rec.request_id),)
        if ok and self.rec.engine_ms is not None:
            self.rec.total_ms = self.rec.elapsed_ms()
            self.rec.overhead_ms = self.rec.overhead(self.rec.total_ms)
            md += ((OVERHEAD_HEADER.lower(), f"{self.rec.overhead_ms:.3f}"),)
        return md

    def end(self, code: str) -> None:
        with contextlib.suppress(ValueError):  # ended in another context than it began
            _CURRENT.reset(self._token)
        self.rec.status = code
        finish(self.rec, self.writer)


class GrpcCalls:
    """The API's gRPC ingress calls, recorded as the ``v2_grpc`` family (health probes aside)."""

    def __init__(self, writer: RequestWriter, open_methods: frozenset[str]) -> None:
        self.writer, self.open_methods = writer, open_methods

    def begin(self, method: str, metadata: Mapping[str, str]) -> GrpcCall | None:
        if method in self.open_methods:
            return None
        return GrpcCall(RequestRecord(request_id(metadata.get(REQUEST_ID_HEADER.lower())), "v2_grpc", method, "POST"), self.writer)


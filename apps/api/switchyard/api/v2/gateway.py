"""The API's KServe V2 data plane: the realtime lane, forwarded to the worker that owns the model.

A ``DataPlane`` (switchyard.common.v2.dataplane) served by the shared REST and gRPC front ends:
server metadata, health, model metadata, configuration and the repository index are answered here
from the model catalog (switchyard.common.catalog, reloadable); readiness, statistics and inference
go to the model's worker. Each domain's worker has one V2 HTTP endpoint (``SWITCHYARD_V2_UPSTREAMS``)
behind one circuit breaker. REST bodies pass through untouched (the worker validates and answers in
V2 form); gRPC calls travel the same hop through the worker's gRPC tunnel
(switchyard.common.v2.asgi), parsed only as far as routing needs. Only failures of the worker
(unreachable, timeout, 5xx) count against the breaker; an open breaker answers 503 + Retry-After
(gRPC: UNAVAILABLE) without calling the worker.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from pydantic import ValidationError
from starlette.types import Scope

from switchyard.api import request_log
from switchyard.api.settings import ApiSettings
from switchyard.common import tracing
from switchyard.common.breaker import Breaker, BreakerOpen
from switchyard.common.catalog import CatalogHolder
from switchyard.common.http1 import Http1Client
from switchyard.common.metrics import UNKNOWN_MODEL
from switchyard.common.request_log import ENGINE_MS_HEADER, ITEMS_HEADER, RequestRecord
from switchyard.common.shadow.canary import SERVED_BY, CanaryOutcomes, active_canary, routed_to_candidate
from switchyard.common.shadow.mirror import ShadowMirror, new_case_id, sampled
from switchyard.common.shadow.spec import ShadowCase, V2Call
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.asgi import PROTOBUF
from switchyard.common.v2.config import V2Config, V2Model
from switchyard.common.v2.dataplane import DataPlane, model_path
from switchyard.common.v2.errors import V2Error, error_message
from switchyard.common.v2.grpc_codec import parse_message
from switchyard.common.v2.statistics import StatisticsResponse

# Headers of a V2 answer that travel back to the client (Retry-After: a worker's 503, e.g. recsys
# with its feature store down).
PASS_HEADERS = ("content-type", "inference-header-content-length", "retry-after")


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]


class _Failed(Exception):
    """A worker answer that counts as a failure (5xx) but is still returned to the client."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


@dataclass
class _Worker:
    domain: str
    breaker: Breaker
    # A lean HTTP/1.1 client: 0.3-0.45 ms less per request than aiohttp (switchyard.common.http1).
    http: Http1Client


def unavailable(e: BreakerOpen) -> V2Error:
    return V2Error(503, f"{e}; retry later", headers={"Retry-After": str(max(1, math.ceil(e.retry_after_s)))})


class V2Gateway(DataPlane):
    def __init__(self, settings: ApiSettings, catalog: CatalogHolder) -> None:
        super().__init__("switchyard")
        self.catalog = catalog
        self.workers = {
            domain: _Worker(domain, Breaker(f"{domain} worker", fail_max=settings.breaker_fail_max, reset_timeout_s=settings.breaker_reset_s),
                            Http1Client.for_url(up.http, timeout_s=settings.v2_timeout_s))
            for domain, up in settings.v2_upstreams.items()
        }
        self.timeout_s = settings.v2_timeout_s
        # Shadow deployment: answered requests of a model with a ``shadow`` are offered here (set in the app's lifespan).
        self.mirror: ShadowMirror | None = None
        # Canary: where the candidate's outcomes of canary-served requests go (set in the app's lifespan).
        self.canary: CanaryOutcomes | None = None

    @property
    def config(self) -> V2Config:
        return self.catalog.current.v2

    async def close(self) -> None:
        for w in self.workers.values():
            await w.http.close()

    def known_models(self) -> Iterable[V2Model]:
        return self.config.models

    def serves(self, model: V2Model) -> bool:
        return model.domain in self.workers

    def find(self, name: str) -> V2Model | None:
        m = self.config.get(name)
        return m if m is not None and self.serves(m) else None

    async def ready(self) -> bool:
        for w in self.workers.values():
            try:
                if (await w.http.request("GET", "/v2/health/ready", timeout_s=2.0)).status != 200:
                    return False
            except OSError:  # TimeoutError included
                return False
        return True

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        m = self.model(name, version)
        answer = await self.forward_http(m.domain, model_path(name, version) + "/ready", None, {})
        if answer.status in (200, 503):
            return answer.status == 200
        raise V2Error(answer.status, error_message(answer.body, f"the {m.domain} worker answered HTTP {answer.status}"))

    async def statistics(self, name: str | None = None, version: str | None = None) -> StatisticsResponse:
        """One model's from its worker; all models' from every worker, merged."""
        if name:
            m = self.model(name, version)
            return await self._statistics(m.domain, model_path(name, version) + "/stats")
        answers = await asyncio.gather(*(self._statistics(domain, "/v2/models/stats") for domain in self.workers))
        return StatisticsResponse(model_stats=[s for a in answers for s in a.model_stats])

    async def _statistics(self, domain: str, path: str) -> StatisticsResponse:
        answer = await self.forward_http(domain, path, None, {})
        if answer.status != 200:
            raise V2Error(answer.status, error_message(answer.body, f"the {domain} worker answered HTTP {answer.status}"))
        try:
            return StatisticsResponse.model_validate_json(answer.body)
        except ValidationError:
            raise V2Error(502, f"the {domain} worker answered statistics Switchyard cannot read") from None

    async def infer_rest(self, name: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        m = self._recorded_model(name, version)
        tracing.annotate(**{"switchyard.model": m.name})
        sent = {k: headers[k] for k in PASS_HEADERS if k in headers}
        served = self.canary_pick(m, version)
        if served is not m:
            version = None
        started = time.perf_counter()
        try:
            answer = await self.forward_http(m.domain, model_path(served.name, version) + "/infer", body, sent, candidate=served is not m)
        except V2Error as e:
            self.canary_done(m, served, started, e.status)
            raise
        self.canary_done(m, served, started, answer.status)
        if served is not m:
            return answer.status, answer.body, {**answer.headers, SERVED_BY: served.name}
        if answer.status == 200:
            self.offer_shadow(m, V2Call(protocol="rest", body=body, headers=sent), answer.body, answer.headers, started)
        return answer.status, answer.body, answer.headers

    async def infer_grpc(self, request: bytes, timeout_s: float | None) -> bytes:
        req = parse_message(pb.ModelInferRequest, request)
        m = self._recorded_model(req.model_name, req.model_version or None)
        tracing.annotate(**{"switchyard.model": m.name})
        served = self.canary_pick(m, req.model_version or None)
        if served is not m:  # the same request addressed to the candidate (its answer names it)
            req.model_name, req.model_version = served.name, ""
            request = req.SerializeToString()
        started = time.perf_counter()
        try:
            answer = await self.forward_grpc(m, "ModelInfer", request, timeout_s, candidate=served is not m)
        except V2Error as e:
            self.canary_done(m, served, started, e.status)
            raise
        self.canary_done(m, served, started, 200)
        if served is m:
            self.offer_shadow(m, V2Call(protocol="grpc", body=request), answer, {}, started)
        return answer

    def canary_pick(self, m: V2Model, version: str | None) -> V2Model:
        """The model that answers this request: ``m``, or (a share of ``shadow.canary.weight``) its
        candidate (switchyard.common.shadow.canary). A request pinned to a version stays on ``m``.
        A canary-served request is noted on the request's record and is not shadow-mirrored."""
        if self.canary is None or version is not None or m.shadow is None or not routed_to_candidate(m.shadow):
            return m
        cand = self.find(m.shadow.candidate)
        if cand is None:
            return m
        rec = request_log.current_or_none()
        if rec is not None:
            rec.params = {**rec.params, "served_by": cand.name}
        return cand

    def canary_done(self, m: V2Model, served: V2Model, started: float, status: int) -> None:
        """The candidate's outcome of a canary-served request (an error: a 5xx, the worker's or
        the hop's): what its automatic rollback is decided on. A 4xx is the client's, not the candidate's."""
        if served is m or self.canary is None or (canary := active_canary(m.shadow)) is None:
            return
        self.canary.note(m.name, served.name, status < 500, (time.perf_counter() - started) * 1000, canary.window_s)

    def offer_shadow(self, m: V2Model, call: V2Call, answer: bytes, answer_headers: dict[str, str], started: float) -> None:
        """Mirror a sampled, answered request of a model with a ``shadow`` (switchyard.common.shadow):
        queued in memory here, sent to the shadow task queue after the client has its answer."""
        if self.mirror is None or m.shadow is None or not sampled(m.shadow):
            return
        rec = request_log.current_or_none()
        self.mirror.offer(ShadowCase(case_id=new_case_id(), domain=m.domain, model=m.name, candidate=m.shadow.candidate,
                                     tenant=rec.tenant if rec else None, request_id=rec.request_id if rec else None,
                                     primary_ms=(time.perf_counter() - started) * 1000, v2=call, v2_answer=answer, v2_answer_headers=answer_headers))

    def _recorded_model(self, name: str, version: str | None) -> V2Model:
        """The model (or 404), noted on the request's record: its name, or "unknown" (never client text)."""
        rec = request_log.current()
        rec.model = UNKNOWN_MODEL
        m = self.model(name, version)
        rec.model = m.name
        return m

    async def forward_http(self, domain: str, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float | None = None, *,
                           candidate: bool = False) -> Answer:
        """POST (body) or GET (None) ``path`` on the domain's worker; with traces on, in a CLIENT span
        whose context the worker continues (``traceparent``)."""
        w = self.workers[domain]
        timeout_s = min(timeout_s or self.timeout_s, self.timeout_s)
        if not tracing.enabled():
            return await self._forward(w, path, body, headers, timeout_s, candidate)
        method = "GET" if body is None else "POST"
        with tracing.client_span(f"{method} {domain} worker", f"http://{w.http.host}:{w.http.port}{path}",
                                 {"http.request.method": method, "switchyard.domain": domain}) as span:
            assert span is not None
            headers = dict(headers)
            tracing.inject(headers)
            answer = await self._forward(w, path, body, headers, timeout_s, candidate)
            tracing.http_status(span, answer.status)
            return answer

    async def _forward(self, w: _Worker, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float, candidate: bool = False) -> Answer:
        rec = request_log.current_or_none()
        if rec is not None:  # the worker's logs and spans can name the request
            headers = {**headers, "x-request-id": rec.request_id}
        try:
            async with w.breaker.guard():
                try:
                    r = await w.http.request("GET" if body is None else "POST", quote(path), body or b"", headers, timeout_s=timeout_s)
                    if rec is not None:
                        _note_compute(rec, r.headers)
                    answer = Answer(r.status, r.body, {k: v for k in PASS_HEADERS if (v := r.headers.get(k)) is not None})
                except TimeoutError:
                    raise V2Error(504, f"the {w.domain} worker did not answer within {timeout_s:.0f}s") from None
                except OSError as e:
                    raise V2Error(503, f"the {w.domain} worker is unreachable ({type(e).__name__})", headers={"Retry-After": "1"}) from None
                # A canary candidate's 5xx is the candidate's (its rollback counts it), not the worker's:
                # it must not open the breaker in front of the primary's traffic.
                if answer.status >= 500 and not candidate:
                    raise _Failed(answer)
                return answer
        except _Failed as f:
            return f.answer
        except BreakerOpen as e:
            raise unavailable(e) from None

    async def forward_grpc(self, model: V2Model, method: str, request: bytes, timeout_s: float | None, *, candidate: bool = False) -> bytes:
        """Call gRPC ``method`` (e.g. ModelInfer) on the model's worker with the client's serialized
        request; the serialized response back, or the worker's error as a V2Error."""
        answer = await self.forward_http(model.domain, f"/v2/grpc/{method}", request, {"content-type": PROTOBUF}, timeout_s, candidate=candidate)
        if answer.status == 200:
            return answer.body
        raise V2Error(answer.status, error_message(answer.body, f"the {model.domain} worker answered HTTP {answer.status}"))


def _note_compute(rec: RequestRecord, headers: dict[str, str]) -> None:
    """The worker's report of the model's time and items (never passed on to the client)."""
    try:
        if (ms := headers.get(ENGINE_MS_HEADER)) is not None:
            rec.engine_ms = float(ms)
        if (items := headers.get(ITEMS_HEADER)) is not None:
            rec.items = int(items)
    except ValueError:
        pass


def gateway_of(scope: Scope) -> V2Gateway:
    """The gateway of the app serving ``scope`` (created in its lifespan, after the app)."""
    return scope["app"].state.resources.v2  # type: ignore[no-any-return]

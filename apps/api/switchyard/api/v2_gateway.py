"""The realtime lane: KServe V2 requests forwarded to the worker that owns the model.

Models come from the model catalog (switchyard.common.catalog, reloadable); each domain's worker has
one V2 HTTP endpoint (``SWITCHYARD_V2_UPSTREAMS``) behind one circuit breaker. REST bodies pass
through untouched (the worker validates and answers in V2 form); gRPC calls travel the same hop
through the worker's gRPC tunnel (switchyard.common.v2.asgi). Only failures of the worker
(unreachable, timeout, 5xx) count against the breaker; an open breaker answers 503 + Retry-After
(gRPC: UNAVAILABLE) without calling the worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import quote

from switchyard.api.settings import ApiSettings
from switchyard.common.breaker import Breaker, BreakerOpen
from switchyard.common.catalog import CatalogHolder
from switchyard.common.http1 import Http1Client
from switchyard.common.v2.asgi import PROTOBUF
from switchyard.common.v2.config import V2Config, V2Model
from switchyard.common.v2.errors import V2Error, error_message

# Headers of a V2 answer that travel back to the client.
PASS_HEADERS = ("content-type", "inference-header-content-length")


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


class V2Gateway:
    def __init__(self, settings: ApiSettings, catalog: CatalogHolder) -> None:
        self.catalog = catalog
        self.workers = {
            domain: _Worker(domain, Breaker(f"{domain} worker", fail_max=settings.breaker_fail_max, reset_timeout_s=settings.breaker_reset_s),
                            Http1Client.for_url(up.http, timeout_s=settings.v2_timeout_s))
            for domain, up in settings.v2_upstreams.items()
        }
        self.timeout_s = settings.v2_timeout_s

    @property
    def config(self) -> V2Config:
        return self.catalog.current.v2

    async def close(self) -> None:
        for w in self.workers.values():
            await w.http.close()

    def model(self, name: str, version: str | None = None) -> V2Model:
        m = self.config.get(name)
        if m is None or m.domain not in self.workers:
            raise V2Error(404, f"unknown model '{name}'")
        if version and version not in m.versions:
            raise V2Error(404, f"model '{name}' has no version '{version}' (versions: {', '.join(m.versions)})")
        return m

    async def ready(self) -> bool:
        for w in self.workers.values():
            try:
                if (await w.http.request("GET", "/v2/health/ready", timeout_s=2.0)).status != 200:
                    return False
            except OSError:  # TimeoutError included
                return False
        return True

    async def forward_http(self, model: V2Model, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float | None = None) -> Answer:
        """POST (body) or GET (None) ``path`` on the model's worker."""
        w = self.workers[model.domain]
        timeout_s = min(timeout_s or self.timeout_s, self.timeout_s)
        try:
            async with w.breaker.guard():
                try:
                    r = await w.http.request("GET" if body is None else "POST", quote(path), body or b"", headers, timeout_s=timeout_s)
                    answer = Answer(r.status, r.body, {k: v for k in PASS_HEADERS if (v := r.headers.get(k)) is not None})
                except TimeoutError:
                    raise V2Error(504, f"the {w.domain} worker did not answer within {timeout_s:.0f}s") from None
                except OSError as e:
                    raise V2Error(503, f"the {w.domain} worker is unreachable ({type(e).__name__})", headers={"Retry-After": "1"}) from None
                if answer.status >= 500:
                    raise _Failed(answer)
                return answer
        except _Failed as f:
            return f.answer
        except BreakerOpen as e:
            raise unavailable(e) from None

    async def forward_grpc(self, model: V2Model, method: str, request: bytes, timeout_s: float | None) -> bytes:
        """Call gRPC ``method`` (e.g. ModelInfer) on the model's worker with the client's serialized
        request; the serialized response back, or the worker's error as a V2Error."""
        answer = await self.forward_http(model, f"/v2/grpc/{method}", request, {"content-type": PROTOBUF}, timeout_s)
        if answer.status == 200:
            return answer.body
        raise V2Error(answer.status, error_message(answer.body, f"the {model.domain} worker answered HTTP {answer.status}"))

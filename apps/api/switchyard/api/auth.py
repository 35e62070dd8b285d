"""Who is calling: every route family but the health probes and the docs needs an API key with its
scope (``jobs``, ``openai``, ``v2``, ``admin``; admin grants them all).

A key comes as ``Authorization: Bearer <key>`` (what OpenAI clients send) or ``X-Api-Key: <key>``;
on gRPC as the same metadata. Missing, unknown or revoked: 401 (``WWW-Authenticate: Bearer``); a
key without the route's scope: 403. Messages never repeat the key. The route's dependency puts the
caller on ``request.state.principal``; handlers read it as ``Caller``.

Where the key is identified (``KeyFirst`` for ``/v1``, the WebSocket handshake, ``authorize_v2`` for
``/v2`` and gRPC) the key's requests per second are counted too (switchyard.common.quotas; one Redis
round trip): over the limit, 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from fastapi import Depends, Request
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.api.errors import ApiError, error_body
from switchyard.common.keys import KeyStore, Principal, key_from_headers
from switchyard.common.quotas import Bucket, QuotaExceeded, Quotas
from switchyard.common.v2.errors import V2Error

CHALLENGE = {"WWW-Authenticate": "Bearer"}
MISSING = "no API key: send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`"
INVALID = "invalid or revoked API key"
LIMITER_DOWN = "the rate limiter is unavailable; retry"


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Gatekeeper:
    """Checks keys with the KeyStore that the app's lifespan opens (``keys``), and their request
    rate with its ``quotas``."""

    def __init__(self) -> None:
        self.keys: KeyStore | None = None
        self.quotas: Quotas | None = None

    async def identify(self, headers: Mapping[str, str]) -> Principal:
        """The caller; else Refused (401)."""
        if self.keys is None:  # requests before the lifespan started
            raise Refused(503, "starting up")
        secret = key_from_headers(headers)
        if secret is None:
            raise Refused(401, MISSING)
        principal = await self.keys.lookup(secret)
        if principal is None:
            raise Refused(401, INVALID)
        return principal

    async def check(self, headers: Mapping[str, str], scope: str, known: Principal | None = None) -> Principal:
        """The caller (``known``: already identified), allowed ``scope``; else Refused (401 or 403)."""
        principal = known or await self.identify(headers)
        if not principal.allows(scope):
            raise Refused(403, f"this API key lacks the {scope!r} scope")
        return principal

    async def limit(self, principal: Principal) -> Bucket | None:
        """Count a request against the caller's requests per second; else Refused (429)."""
        if self.quotas is None:
            return None
        try:
            return await self.quotas.request(principal.key_id, principal.limits)
        except QuotaExceeded as e:
            raise Refused(429, e.message, e.headers) from None
        except RedisError as e:  # the counters are unreachable: a clear 503, never unlimited
            raise Refused(503, LIMITER_DOWN) from e

    async def authorize_v2(self, headers: Mapping[str, str]) -> None:
        """The V2 front ends' hook (REST routes, the infer fast path, gRPC): key, scope, request rate."""
        try:
            await self.limit(await self.check(headers, "v2"))
        except Refused as e:
            answer = CHALLENGE if e.status == 401 else {"Retry-After": "1"} if e.status == 503 else e.headers
            raise V2Error(e.status, e.message, answer) from None


def refusal(e: Refused) -> ApiError:
    """The job/OpenAI API's error for a refused key."""
    if e.status == 401:
        return ApiError(401, "invalid_api_key", e.message, headers=CHALLENGE)
    if e.status == 403:
        return ApiError(403, "insufficient_scope", e.message)
    if e.status == 429:
        return ApiError(429, "rate_limit_exceeded", e.message, headers=e.headers)
    return ApiError(e.status, "unavailable", e.message, headers={"Retry-After": "1"})


def gatekeeper_of(conn: HTTPConnection) -> Gatekeeper:
    return conn.app.state.gatekeeper  # type: ignore[no-any-return]


async def authenticate(conn: HTTPConnection, scope: str) -> Principal:
    """The caller of an HTTP request or WebSocket, allowed ``scope``; else ApiError (401/403)."""
    known = getattr(conn.state, "principal", None)
    try:
        gatekeeper = gatekeeper_of(conn)
        principal = await gatekeeper.check(conn.headers, scope, known)
        if known is None:  # not counted by KeyFirst (a WebSocket handshake)
            await gatekeeper.limit(principal)
    except Refused as e:
        raise refusal(e) from None
    conn.state.principal = principal
    return principal


def require(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A router dependency: the request needs a key with ``scope``."""

    async def dependency(request: Request) -> None:
        await authenticate(request, scope)

    return dependency


async def _principal(request: Request) -> Principal:  # async: no thread-pool hop (see deps._resources)
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # a route outside an authenticated router: a bug
        raise RuntimeError(f"{request.url.path} has no authenticated caller")
    return principal


Caller = Annotated[Principal, Depends(_principal)]


class KeyFirst:
    """ASGI middleware: a ``/v1`` request without a valid key is refused (401) before anything reads
    its body, so a caller without a key learns nothing from validation (400) or size (413) errors,
    and one over its requests per second (429). The caller it finds is kept for the route's scope
    check (``authenticate``). Every answer carries the key's ``x-ratelimit-*-requests`` headers, and
    the ``-tokens`` ones when admission left them on the request's state (``rate_tokens``)."""

    def __init__(self, app: ASGIApp, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            state = scope.setdefault("state", {})
            try:
                state["principal"] = principal = await self.gatekeeper.identify(headers)
                bucket = await self.gatekeeper.limit(principal)
            except Refused as e:
                err = refusal(e)
                body = json.dumps(error_body(err.status, err.code, err.message)).encode()
                raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (err.headers or {}).items()]
                await send({"type": "http.response.start", "status": err.status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
            if bucket is not None:
                await self.app(scope, receive, with_rate_headers(send, bucket, state))
                return
        await self.app(scope, receive, send)


def with_rate_headers(send: Send, requests: Bucket, state: dict[str, object]) -> Send:
    """``send`` adding OpenAI's rate-limit headers to the response's start (those it lacks)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            extra = requests.headers("requests")
            tokens = state.get("rate_tokens")
            if isinstance(tokens, Bucket):
                extra.update(tokens.headers("tokens"))
            present = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *((k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present)]
        await send(message)

    return wrapped

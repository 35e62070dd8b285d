"""A lean keep-alive HTTP/1.1 client for the realtime lane's hops between Switchyard's own processes
(API → worker, worker → Triton).

aiohttp costs 0.3–0.45 ms more per forwarded request than this on the 2-core reference machine
(docs/vision.md: per-request URL, cookie, timer and tracing objects in Python); the vision lane's
whole overhead budget is 2 ms. Responses are parsed by ``httptools`` (the C parser uvicorn uses),
so Content-Length, chunked bodies and ``Connection: close`` are handled as HTTP says. Requests are
written in one ``writelines`` call; a connection idles in the pool until the peer closes it.
Everything else (redirects, TLS, proxies, cookies, compression) is out of scope by design.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import httptools


class ProtocolError(ConnectionError):
    """The peer broke HTTP/1.1 (unparseable answer) or closed the connection mid-answer."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class _Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False
        self.received = False  # any byte of the current answer
        self._parser = httptools.HttpResponseParser(self)
        self._answer = _Answer()
        self._waiter: asyncio.Future[Response] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ProtocolError(f"malformed HTTP answer: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ProtocolError("connection closed before the answer was complete"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._answer.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._answer.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        a = self._answer
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(a.status, a.headers, b"".join(a.chunks)))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        self._answer, self.received, self.keep_alive = _Answer(), False, False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body) if body else (head,))
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Client:
    """Requests to one ``host:port``; up to ``max_idle`` connections are kept for reuse."""

    def __init__(self, host: str, port: int, *, timeout_s: float | None = None, max_idle: int = 64, connect_timeout_s: float = 2.0) -> None:
        self.host, self.port = host, port
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self._idle: deque[_Connection] = deque()
        self._max_idle = max_idle
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s

    @classmethod
    def for_url(cls, url: str, *, timeout_s: float | None = None) -> Http1Client:
        """``http://host:port`` or ``host:port``."""
        netloc = url.removeprefix("http://").split("/", 1)[0]
        host, _, port = netloc.rpartition(":")
        return cls(host, int(port), timeout_s=timeout_s)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    def _head(self, method: str, path: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        for k, v in headers.items():
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                raise ValueError(f"header {k!r}: line breaks are not allowed")
            lines.append(f"{k}: {v}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\n\r\n" % length)
        return b"".join(lines)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout_s: float | None = None) -> Response:
        """Send one request; raises OSError (incl. ConnectionError) when the peer cannot be reached
        or breaks the exchange, TimeoutError after ``timeout_s`` (default: the client's)."""
        head = self._head(method, path, headers or {}, len(body))
        async with asyncio.timeout(timeout_s or self._timeout_s):
            while True:
                conn = self._idle.pop() if self._idle else None
                reused = conn is not None
                if conn is None or conn.closed:
                    conn, reused = await self._connect(), False
                try:
                    answer = await conn.exchange(head, body)
                except ProtocolError:
                    conn.close()
                    if reused and not conn.received:
                        continue  # the peer closed an idle connection as we used it: once more on a new one
                    raise
                except BaseException:
                    conn.close()  # cancelled or timed out mid-exchange: the connection's state is unknown
                    raise
                if conn.keep_alive and not conn.closed and len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                else:
                    conn.close()
                return answer

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

"""The realtime lane's HTTP/1.1 client against real HTTP peers: uvicorn, and raw asyncio servers for
the ways a peer can misbehave (close an idle connection, chunk or break an answer, hang)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import uvicorn
from starlette.types import Receive, Scope, Send

from switchyard.common.http1 import Http1Client, ProtocolError

pytestmark = pytest.mark.asyncio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI: answers with the request body, its method and path in headers."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    headers = [(b"content-type", b"application/octet-stream"), (b"x-method", scope["method"].encode()), (b"x-path", scope["raw_path"]),
               (b"x-client-port", str(scope["client"][1]).encode())]
    await send({"type": "http.response.start", "status": 201 if body else 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def uvicorn_port() -> AsyncIterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(echo, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await task


async def raw_server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_round_trips_and_reuses_its_connection(uvicorn_port: int) -> None:
    c = Http1Client("127.0.0.1", uvicorn_port)
    big = bytes(range(256)) * 4096  # 1 MiB, several socket writes
    r1 = await c.request("POST", "/v2/models/m/infer", big, {"Content-Type": "application/octet-stream"})
    r2 = await c.request("GET", "/v2/health/ready")
    assert (r1.status, r1.body, r1.headers["x-method"], r1.headers["x-path"]) == (201, big, "POST", "/v2/models/m/infer")
    assert (r2.status, r2.body, r2.headers["x-method"]) == (200, b"", "GET")
    assert r1.headers["x-client-port"] == r2.headers["x-client-port"], "the second request should reuse the kept-alive connection"
    await c.close()


async def test_concurrent_requests_use_separate_connections(uvicorn_port: int) -> None:
    c = Http1Client("127.0.0.1", uvicorn_port)
    answers = await asyncio.gather(*(c.request("POST", f"/{i}", str(i).encode()) for i in range(8)))
    assert [a.body for a in answers] == [str(i).encode() for i in range(8)]
    assert len({a.headers["x-client-port"] for a in answers}) == 8
    await c.close()


async def test_chunked_answer_and_connection_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await raw_server(handler)
    c = Http1Client("127.0.0.1", port)
    r = await c.request("POST", "/", b"x")
    assert (r.status, r.body) == (200, b"hello world")
    assert not c._idle, "a Connection: close answer must not be kept"
    server.close()


async def test_an_idle_connection_closed_by_the_peer_is_replaced() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive promised, then closed: what an idle timeout does

    server, port = await raw_server(handler)
    c = Http1Client("127.0.0.1", port)
    assert (await c.request("POST", "/", b"1")).body == b"ok"
    await asyncio.sleep(0.05)
    assert (await c.request("POST", "/", b"2")).body == b"ok"
    assert served == 2
    server.close()


async def test_failures_are_os_errors_or_timeouts() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    with pytest.raises(ConnectionRefusedError):
        await Http1Client("127.0.0.1", free_port()).request("GET", "/")
    for handler in (broken, truncated):
        server, port = await raw_server(handler)
        with pytest.raises(ProtocolError):
            await Http1Client("127.0.0.1", port).request("POST", "/", b"x")
        server.close()
    server, port = await raw_server(silent)
    c = Http1Client("127.0.0.1", port, timeout_s=0.2)
    with pytest.raises(TimeoutError):
        await c.request("POST", "/", b"x")
    assert not c._idle, "a connection abandoned mid-answer must not be reused"
    server.close()


async def test_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        await Http1Client("127.0.0.1", free_port()).request("GET", "/", headers={"X-A": "1\r\nX-Injected: 2"})

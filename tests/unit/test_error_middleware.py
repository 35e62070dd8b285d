"""``CatchUnexpected``: an unhandled exception is a 500 in the error shape, and the connection lives on."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from starlette.types import Receive, Scope, Send

from switchyard.api import errors


async def _raises_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


async def _raises_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom mid-stream")


async def _raises_after_the_response(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"done"})
    raise RuntimeError("boom in a background task")


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_exception_before_the_response_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="switchyard.api"):
        async with _client(errors.CatchUnexpected(_raises_before_start)) as c:
            r = await c.post("/v1/jobs")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"type": "api_error", "code": "internal_error", "message": "internal error", "param": None}}
    [record] = [rec for rec in caplog.records if rec.name == "switchyard.api"]
    assert "POST /v1/jobs" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)  # the traceback is logged


@pytest.mark.asyncio
async def test_v2_paths_get_the_v2_shape() -> None:
    async with _client(errors.CatchUnexpected(_raises_before_start)) as c:
        r = await c.get("/v2/models/m/ready")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error"}


@pytest.mark.asyncio
async def test_exception_after_the_response_started_propagates() -> None:
    async with _client(errors.CatchUnexpected(_raises_after_start)) as c:
        with pytest.raises(RuntimeError, match="mid-stream"):
            await c.get("/v1/chat/completions")


@pytest.mark.asyncio
async def test_exception_after_a_complete_response_is_logged_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="switchyard.api"):
        async with _client(errors.CatchUnexpected(_raises_after_the_response)) as c:
            r = await c.get("/v1/jobs")
    assert r.status_code == 200 and r.text == "done"
    assert any(rec.exc_info and "background task" in str(rec.exc_info[1]) for rec in caplog.records)


@pytest.mark.asyncio
async def test_other_scopes_and_normal_responses_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with _client(errors.CatchUnexpected(app)) as c:
        assert (await c.get("/healthz")).status_code == 204
    with pytest.raises(RuntimeError):  # a websocket (or lifespan) error is left to the server
        await errors.CatchUnexpected(_raises_before_start)({"type": "websocket", "path": "/v1/jobs/x/ws"}, None, None)  # type: ignore[arg-type]
    assert seen == ["http"]


# ------------------------------------------------------------------ over a real server


async def _fail() -> None:
    raise RuntimeError("background task failed")


def _fastapi_app() -> FastAPI:
    """The API's error wiring (errors.install + CatchUnexpected) around a route that crashes."""
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(_fail)
        return {"ok": True}

    @app.get("/peer")
    async def peer(request: Request) -> dict[str, int]:
        assert request.client is not None
        return {"port": request.client.port}

    app.add_middleware(errors.CatchUnexpected)
    return app


@pytest.fixture
def server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = uvicorn.Server(uvicorn.Config(_fastapi_app(), host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def test_a_500_keeps_the_keep_alive_connection(server: str) -> None:
    """The server answers the 500 (or, after a failed background task, nothing more) and keeps the
    connection: the next request reuses it (same client port)."""
    with httpx.Client(base_url=server, timeout=10) as c:
        port = c.get("/peer").json()["port"]
        for _ in range(5):
            r = c.get("/boom")
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            assert r.headers.get("connection") != "close"
            assert c.get("/background").json() == {"ok": True}
        assert c.get("/peer").json()["port"] == port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_a_backing_service_that_is_down_is_a_503_with_retry_after(backend: str) -> None:
    """A real client of each service against a port nothing listens on (the service down or
    restarting): the caller may retry, so 503 + Retry-After, not 500."""
    from redis.asyncio import Redis
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    port = _free_port()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if backend == "redis":
            await Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=2).ping()
        else:
            async with create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x").connect() as conn:
                await conn.execute(text("select 1"))

    async with _client(errors.CatchUnexpected(app)) as c:
        r, v2 = await c.post("/v1/jobs"), await c.post("/v2/models/m/infer")
    assert (r.status_code, r.headers.get("retry-after")) == (503, "1"), r.text
    assert r.json()["error"]["code"] == "service_unavailable"
    assert (v2.status_code, v2.json()) == (503, {"error": errors.BACKEND_DOWN})

"""The realtime lane's hot path as plain ASGI: ``POST /v2/models/{m}[/versions/{v}]/infer``, and
``POST /v2/grpc/{Method}`` (the gRPC tunnel, below).

Routing, dependency injection and middleware stacks cost ~0.5 ms per request per process on this
machine, a quarter of the lane's overhead budget; the API and the workers answer infer requests
here and hand everything else to their framework app.

The gRPC tunnel carries one ``inference.GRPCInferenceService`` call from the API to a worker over
the same HTTP/1.1 hop as REST: the serialized request as the body, the serialized response back
(``application/x-protobuf``), errors as V2 errors whose status the API maps to a gRPC code. A
grpc.aio client in the API and server in the worker cost ~0.6 ms more per call (docs/vision.md).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import unquote

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from switchyard.common.v2 import compute
from switchyard.common.v2.errors import V2Error, error_body

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
GRPC_TUNNEL_PATH = re.compile(r"^/v2/grpc/(\w+)$")
PROTOBUF = "application/x-protobuf"

# (scope, model, version, body, request headers) → (status, body, response headers)
InferHandler = Callable[[Scope, str, str | None, bytes, dict[str, str]], Awaitable[tuple[int, bytes, dict[str, str]]]]
# (gRPC method name, serialized request) → serialized response
TunnelHandler = Callable[[str, bytes], Awaitable[bytes]]
# Checks a request's credentials (lower-case header or gRPC metadata names → values); raises a
# V2Error (401/403) to refuse it. The API passes one; a worker's ports are internal and pass None.
Authorize = Callable[[Mapping[str, str]], Awaitable[None]]


def error_response(e: V2Error) -> Response:
    """A V2 error as a framework response: ``{"error": message}`` with its status and headers."""
    return Response(error_body(e.message), status_code=e.status, media_type="application/json", headers=e.headers)


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise V2Error(400, "client disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise V2Error(413, f"request body exceeds {max_bytes} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items() if k != "content-length"]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def infer_fast_path(app: ASGIApp, handler: InferHandler, max_bytes: int, tunnel: TunnelHandler | None = None,
                    authorize: Authorize | None = None, report_compute: bool = False) -> ASGIApp:
    """``app`` with V2 infer requests answered by ``handler`` and, when given, gRPC tunnel calls by
    ``tunnel`` (V2 errors become ``{"error": ...}``). ``authorize`` checks an infer request before
    its body is read. ``report_compute`` (a worker's): answers carry the model's time and items
    (switchyard.common.v2.compute) for the API's request log."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        infer = tunneled = None
        if scope["type"] == "http" and scope["method"] == "POST":
            infer = INFER_PATH.match(scope["path"])
            tunneled = GRPC_TUNNEL_PATH.match(scope["path"]) if infer is None and tunnel is not None else None
        if infer is None and tunneled is None:
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if authorize is not None and infer is not None:
                await authorize(headers)
            declared = headers.get("content-length", "0")
            if not declared.isdigit():
                raise V2Error(400, "Content-Length is not an integer")
            if int(declared) > max_bytes:
                raise V2Error(413, f"request body exceeds {max_bytes} bytes")
            body = await read_body(receive, max_bytes)
            with compute.measuring() as measured:
                if infer is not None:
                    if not body:
                        raise V2Error(400, "empty inference request")
                    version = unquote(infer[2]) if infer[2] else None
                    status, out, out_headers = await handler(scope, unquote(infer[1]), version, body, headers)
                else:
                    assert tunnel is not None and tunneled is not None
                    status, out, out_headers = 200, await tunnel(tunneled[1], body), {"content-type": PROTOBUF}
            if report_compute and measured.engine_ms is not None:
                out_headers = {**out_headers, **measured.headers()}
        except V2Error as e:
            status, out, out_headers = e.status, error_body(e.message), {"content-type": "application/json", **e.headers}
        await respond(send, status, out, out_headers)

    return asgi

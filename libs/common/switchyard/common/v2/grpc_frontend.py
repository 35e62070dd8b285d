"""The KServe V2 gRPC front end (``inference.GRPCInferenceService`` plus Triton's ModelConfig,
ModelStatistics and RepositoryIndex) on any DataPlane: the API's gRPC ingress and a worker's gRPC
port, and the HTTP gRPC tunnel (``POST /v2/grpc/{Method}``, switchyard.common.v2.asgi) through which
the API forwards calls to a worker.

Methods take and return serialized messages (no (de)serializers on the server): a request is parsed
only as far as its handler needs, and the API's gateway forwards ModelInfer without re-encoding it.
Given an ``authorize`` hook (the API's), every method but ServerLive/ServerReady (health probes, open
as on REST) first checks the call's metadata (``authorization: Bearer <key>`` or ``x-api-key``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import grpc

from switchyard.common import tracing
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2 import triton_extensions_pb2 as ext
from switchyard.common.v2.asgi import Authorize, TunnelHandler
from switchyard.common.v2.dataplane import DataPlane
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.grpc_codec import SERVICE, config_to_pb, index_to_pb, metadata_to_pb, parse_message, statistics_to_pb

log = logging.getLogger("switchyard.v2")

# (serialized request, seconds left of the client's deadline) → serialized response
Method = Callable[[bytes, float | None], Awaitable[bytes]]
# A handler as grpc.aio calls it.
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
# Health probes: answered without credentials.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})


def methods(plane: DataPlane) -> dict[str, Method]:
    async def server_live(_: bytes, __: float | None) -> bytes:
        return bytes(pb.ServerLiveResponse(live=await plane.live()).SerializeToString())

    async def server_ready(_: bytes, __: float | None) -> bytes:
        return bytes(pb.ServerReadyResponse(ready=await plane.ready()).SerializeToString())

    async def server_metadata(_: bytes, __: float | None) -> bytes:
        return bytes(pb.ServerMetadataResponse(**plane.server_metadata()).SerializeToString())

    async def model_ready(raw: bytes, _: float | None) -> bytes:
        req = parse_message(pb.ModelReadyRequest, raw)
        return bytes(pb.ModelReadyResponse(ready=await plane.model_ready(req.name, req.version or None)).SerializeToString())

    async def model_metadata(raw: bytes, _: float | None) -> bytes:
        req = parse_message(pb.ModelMetadataRequest, raw)
        return bytes(metadata_to_pb(plane.model(req.name, req.version or None)).SerializeToString())

    async def model_config(raw: bytes, _: float | None) -> bytes:
        req = parse_message(ext.ModelConfigRequest, raw)
        return bytes(config_to_pb(plane.model_config(req.name, req.version or None)).SerializeToString())

    async def model_statistics(raw: bytes, _: float | None) -> bytes:
        req = parse_message(ext.ModelStatisticsRequest, raw)
        return bytes(statistics_to_pb(await plane.statistics(req.name or None, req.version or None)).SerializeToString())

    async def repository_index(raw: bytes, _: float | None) -> bytes:
        req = parse_message(ext.RepositoryIndexRequest, raw)
        return bytes(index_to_pb(plane.repository_index(req.ready)).SerializeToString())

    return {
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "ModelReady": model_ready,
        "ModelMetadata": model_metadata,
        "ModelConfig": model_config,
        "ModelStatistics": model_statistics,
        "RepositoryIndex": repository_index,
        "ModelInfer": plane.infer_grpc,
    }


def traced(name: str, call: Handler) -> Handler:
    """``call`` in a SERVER span continuing the caller's ``traceparent`` metadata."""
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}

    async def traced_call(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        carrier = {k: v for k, v in context.invocation_metadata() or () if k in ("traceparent", "tracestate") and isinstance(v, str)}
        with tracing.server_span(f"{SERVICE}/{name}", carrier, attributes, errors_from_exceptions=False) as span:
            try:
                return await call(raw, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                tracing.grpc_status(span, code.name, code.value[0])

    return traced_call


class CallRecord(Protocol):
    """One call's entry in a ``CallLog``: its initial metadata (the request id; on success, the
    overhead), then its end with the gRPC code name."""

    def initial_metadata(self, ok: bool) -> tuple[tuple[str, str], ...]: ...

    def end(self, code: str) -> None: ...


class CallLog(Protocol):
    """Records calls (the API's request log); None from ``begin``: this call is not recorded."""

    def begin(self, method: str, metadata: Mapping[str, str]) -> CallRecord | None: ...


def handlers(plane: DataPlane, authorize: Authorize | None = None, calls: CallLog | None = None) -> grpc.GenericRpcHandler:
    """The service's handlers; with traces on (decided now: the process set them up first), a span
    per call; given ``calls``, each call recorded there."""

    def guarded(name: str, fn: Method) -> Handler:
        check = authorize if name not in OPEN_METHODS else None

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)} if check or calls else {}
            rec = calls.begin(name, metadata) if calls is not None else None
            code = "CANCELLED"  # unless it ends otherwise (the client went away)
            try:
                try:
                    if check is not None:
                        await check(metadata)
                    out = await fn(raw, context.time_remaining())
                    if rec is not None:
                        await context.send_initial_metadata(rec.initial_metadata(True))
                    code = "OK"
                    return out
                except V2Error as e:
                    code = e.grpc_code
                    if rec is not None:
                        await context.send_initial_metadata(rec.initial_metadata(False))
                    if e.headers:  # all at once: each call replaces the previous trailers
                        context.set_trailing_metadata(tuple((k.lower(), v) for k, v in e.headers.items()))
                    await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
                except Exception:
                    code = "INTERNAL"
                    log.exception("gRPC call failed")
                    if rec is not None:
                        await context.send_initial_metadata(rec.initial_metadata(False))
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {plane.server_name}")
            finally:
                if rec is not None:
                    rec.end(code)
            raise AssertionError("unreachable")  # abort raises

        return traced(name, call) if tracing.enabled() and name not in OPEN_METHODS else call  # probes: no trace each

    return grpc.method_handlers_generic_handler(SERVICE, {name: grpc.unary_unary_rpc_method_handler(guarded(name, fn)) for name, fn in methods(plane).items()})


def tunnel(plane: DataPlane) -> TunnelHandler:
    """The same methods for the HTTP gRPC tunnel: errors as V2Errors, which the caller maps back to gRPC."""
    table = methods(plane)

    async def call(method: str, body: bytes) -> bytes:
        fn = table.get(method)
        if fn is None:
            raise V2Error(501, f"{SERVICE} has no method {method}")
        try:
            return await fn(body, None)
        except V2Error:
            raise
        except Exception:
            log.exception("gRPC call failed")
            raise V2Error(500, f"internal error in {plane.server_name}") from None

    return call


async def start_server(plane: DataPlane, host: str, port: int, max_message_bytes: int, authorize: Authorize | None = None,
                       calls: CallLog | None = None) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handlers(plane, authorize, calls),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server

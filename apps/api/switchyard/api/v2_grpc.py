"""KServe V2 gRPC ingress (``inference.GRPCInferenceService``): server-level calls and model
metadata answered here, ModelReady / ModelInfer forwarded as raw bytes to the model's worker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from switchyard.api.v2_gateway import V2Gateway
from switchyard.api.v2_routes import SERVER_METADATA
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.grpc_codec import SERVICE, metadata_to_pb

log = logging.getLogger("switchyard.api")

Raw = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _parse(msg_type: Any, raw: bytes) -> Any:
    try:
        return msg_type.FromString(raw)
    except DecodeError:
        raise V2Error(400, f"malformed {msg_type.__name__}") from None


def handlers(gateway: V2Gateway) -> grpc.GenericRpcHandler:
    async def server_live(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        return bytes(pb.ServerLiveResponse(live=True).SerializeToString())

    async def server_ready(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        return bytes(pb.ServerReadyResponse(ready=await gateway.ready()).SerializeToString())

    async def server_metadata(_: bytes, __: grpc.aio.ServicerContext) -> bytes:
        return bytes(pb.ServerMetadataResponse(**SERVER_METADATA).SerializeToString())

    async def model_metadata(raw: bytes, _: grpc.aio.ServicerContext) -> bytes:
        req = _parse(pb.ModelMetadataRequest, raw)
        return bytes(metadata_to_pb(gateway.model(req.name, req.version or None)).SerializeToString())

    def forwarded(method: str, msg_type: Any, name_field: str, version_field: str) -> Raw:
        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            req = _parse(msg_type, raw)
            model = gateway.model(getattr(req, name_field), getattr(req, version_field) or None)
            return await gateway.forward_grpc(model, method, raw, context.time_remaining())

        return call

    methods: dict[str, Raw] = {
        "ServerLive": server_live,
        "ServerReady": server_ready,
        "ServerMetadata": server_metadata,
        "ModelMetadata": model_metadata,
        "ModelReady": forwarded("ModelReady", pb.ModelReadyRequest, "name", "version"),
        "ModelInfer": forwarded("ModelInfer", pb.ModelInferRequest, "model_name", "model_version"),
    }

    def guarded(fn: Raw) -> Raw:
        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await fn(raw, context)
            except V2Error as e:
                for k, v in e.headers.items():
                    context.set_trailing_metadata(((k.lower(), v),))
                await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
            except Exception:
                log.exception("gRPC call failed")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise AssertionError("unreachable")

        return wrapped

    # Raw bytes in and out (no (de)serializers): requests are parsed only as far as routing needs.
    return grpc.method_handlers_generic_handler(SERVICE, {name: grpc.unary_unary_rpc_method_handler(guarded(fn)) for name, fn in methods.items()})


async def start_server(gateway: V2Gateway, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handlers(gateway),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server

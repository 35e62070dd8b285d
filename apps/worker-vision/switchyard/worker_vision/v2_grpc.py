"""KServe V2 gRPC service of the vision worker (``inference.GRPCInferenceService``): served on the
worker's gRPC port for direct clients, and through the HTTP gRPC tunnel (switchyard.common.v2.asgi)
for calls the API forwards."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.asgi import TunnelHandler
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.grpc_codec import SERVICE, metadata_to_pb, request_from_pb, response_to_pb
from switchyard.worker_vision.dataplane import VisionDataPlane
from switchyard.worker_vision.v2_http import SERVER

log = logging.getLogger("switchyard.worker_vision")

Method = Callable[[Any], Awaitable[Any]]


def methods(plane: VisionDataPlane) -> dict[str, tuple[Method, Any]]:
    """Method name → (handler, request message type)."""

    async def server_live(_: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(_: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await plane.ready())

    async def server_metadata(_: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**SERVER)

    async def model_ready(req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await plane.model_ready(req.name, req.version or None))

    async def model_metadata(req: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return metadata_to_pb(plane.model(req.name, req.version or None))

    async def model_infer(req: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return response_to_pb(await plane.infer(request_from_pb(req)))

    return {
        "ServerLive": (server_live, pb.ServerLiveRequest),
        "ServerReady": (server_ready, pb.ServerReadyRequest),
        "ServerMetadata": (server_metadata, pb.ServerMetadataRequest),
        "ModelReady": (model_ready, pb.ModelReadyRequest),
        "ModelMetadata": (model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": (model_infer, pb.ModelInferRequest),
    }


def handlers(plane: VisionDataPlane) -> grpc.GenericRpcHandler:
    def guard(fn: Method) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(request)
            except V2Error as e:
                await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
            except Exception:
                log.exception("gRPC call failed")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error in the vision worker")

        return wrapped

    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(guard(fn), request_deserializer=msg.FromString, response_serializer=lambda m: m.SerializeToString())
        for name, (fn, msg) in methods(plane).items()
    })


def tunnel(plane: VisionDataPlane) -> TunnelHandler:
    table = methods(plane)

    async def call(method: str, body: bytes) -> bytes:
        if method not in table:
            raise V2Error(501, f"{SERVICE} has no method {method}")
        fn, msg = table[method]
        try:
            request = msg.FromString(body)
        except DecodeError:
            raise V2Error(400, f"malformed {msg.__name__}") from None
        try:
            return bytes((await fn(request)).SerializeToString())
        except V2Error:
            raise
        except Exception:
            log.exception("gRPC call failed")
            raise V2Error(500, "internal error in the vision worker") from None

    return call

"""KServe V2 gRPC service of the vision worker (``inference.GRPCInferenceService``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.grpc_codec import SERVICE, metadata_to_pb, request_from_pb, response_to_pb
from switchyard.worker_vision.dataplane import VisionDataPlane
from switchyard.worker_vision.v2_http import SERVER

log = logging.getLogger("switchyard.worker_vision")

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _guard(fn: Handler) -> Handler:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except V2Error as e:
            await context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
        except Exception:
            log.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the vision worker")

    return wrapped


def handlers(plane: VisionDataPlane) -> grpc.GenericRpcHandler:
    async def server_live(_: pb.ServerLiveRequest, __: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(_: pb.ServerReadyRequest, __: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await plane.ready())

    async def server_metadata(_: pb.ServerMetadataRequest, __: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**SERVER)

    async def model_ready(req: pb.ModelReadyRequest, _: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=await plane.model_ready(req.name, req.version or None))

    async def model_metadata(req: pb.ModelMetadataRequest, _: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        return metadata_to_pb(plane.model(req.name, req.version or None))

    async def model_infer(req: pb.ModelInferRequest, _: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return response_to_pb(await plane.infer(request_from_pb(req)))

    methods: dict[str, tuple[Handler, Any]] = {
        "ServerLive": (server_live, pb.ServerLiveRequest),
        "ServerReady": (server_ready, pb.ServerReadyRequest),
        "ServerMetadata": (server_metadata, pb.ServerMetadataRequest),
        "ModelReady": (model_ready, pb.ModelReadyRequest),
        "ModelMetadata": (model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": (model_infer, pb.ModelInferRequest),
    }
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(_guard(fn), request_deserializer=msg.FromString, response_serializer=lambda m: m.SerializeToString())
        for name, (fn, msg) in methods.items()
    })

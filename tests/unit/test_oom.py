"""Out-of-memory errors are recognised from each engine's own error text, and nothing else is.

Every sample is an engine's literal text, with where it comes from; sizes and names inside are the
only parts that vary between occurrences."""

from __future__ import annotations

import json

import httpx
import pytest

from switchyard.common.contracts import LlmInput
from switchyard.common.engines.base import EngineError
from switchyard.common.engines.llamacpp import LlamaCppEngine
from switchyard.common.engines.oom import OOM_ERROR_TYPE, EngineOutOfMemory, as_out_of_memory, classify_oom, oom_source
from switchyard.common.engines.vllm import VllmEngine

# (engine whose pattern matches, HTTP status the engine answers with, message as it reaches us)
OOM_SAMPLES = [
    # PyTorch's caching allocator, str(torch.OutOfMemoryError) (torch 2.x c10/cuda/CUDACachingAllocator.cpp).
    ("torch", 500, "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.23 GiB is free. "
                   "Including non-PyTorch memory, this process has 77.91 GiB memory in use. Of the allocated memory 75.10 GiB is allocated by "
                   "PyTorch, and 1.20 GiB is reserved by PyTorch but unallocated."),
    # The same as a traceback line (vllm-project/vllm#12030's title).
    ("torch", 500, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a total capacity of 11.53 GiB of which 187.75 MiB is free."),
    # Older PyTorch (vllm-project/vllm#188).
    ("torch", 500, "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 224.00 MiB (GPU 0; 10.73 GiB total capacity; "
                   "9.85 GiB already allocated; 46.44 MiB free; 9.86 GiB reserved in total by PyTorch)"),
    # Triton's PyTorch backend wraps the exception text (libtorch backend: "PyTorch execute failure: ...").
    ("torch", 500, "PyTorch execute failure: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 14.75 GiB total capacity)"),
    # The CUDA runtime's text for cudaErrorMemoryAllocation, as PyTorch raises it outside the allocator.
    ("cuda", 500, "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call"),
    # onnxruntime's CUDA execution provider (core/providers/cuda/cuda_call.cc).
    ("cuda", 500, "CUDA failure 2: out of memory ; GPU=0 ; hostname=gpu-1 ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_allocator.cc ; "
                  "line=47 ; expr=cudaMalloc((void**)&p, size);"),
    ("cuda", 500, "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0 ; hostname=gpu-1 ; expr=cublasCreate(&cublas_handle_);"),
    # Triton + onnxruntime backend, gRPC StatusCode.INTERNAL / HTTP 500 (triton-inference-server/server#7019).
    ("onnxruntime", 500, "onnx runtime error 6: Non-zero status code returned while running Mul node. Name:'Mul_8702' Status Message: "
                         "/workspace/onnxruntime/onnxruntime/core/framework/bfc_arena.cc:368 void* onnxruntime::BFCArena::AllocateRawInternal"
                         "(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested "
                         "buffer of size 2830172160"),
    # onnxruntime in Python (InferenceSession.run raising RuntimeException), triton-inference-server/onnxruntime_backend#249.
    ("onnxruntime", 500, "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. Name:'Conv_0' "
                         "Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:368 void* onnxruntime::BFCArena::"
                         "AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate "
                         "memory for requested buffer of size 15728896"),
    # Triton's pinned-memory manager (core: pinned_memory_manager.cc).
    ("triton", 500, "failed to allocate pinned system memory, falling back to non-pinned system memory"),
    # llama.cpp server, tools/server/server-context.cpp: llama_decode found no KV-cache room even for one token.
    ("llamacpp", 500, "Context size has been exceeded."),
    # llama.cpp server: llama_decode < -1 (a compute buffer/graph could not be allocated).
    ("llamacpp", 500, "Compute error."),
    # libllama's own log line, when an engine passes it through (e.g. a llama-cpp-python server).
    ("llamacpp", 500, "decode: failed to find a memory slot for batch of size 512"),
]

NOT_OOM = [
    (400, "the request exceeds the available context size, try increasing it"),  # llama.cpp: exceed_context_size_error (bad input)
    (400, "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens."),  # vLLM
    (500, "EngineCore encountered an issue. See stack trace (above) for the root cause."),  # vLLM v1, engine dead: a breaker matter
    (503, "Loading model"),  # llama.cpp while loading
    (400, "CUDA out of memory"),  # a 4xx is the request's fault whatever it says (never retried as an OOM)
    (500, "Invalid input batch."),  # llama.cpp, llama_decode == -1
    (500, "onnx runtime error 2: not enough space: expected 318080, got 314240"),  # a wrong output shape, not memory
]


@pytest.mark.parametrize(("engine", "status", "message"), OOM_SAMPLES)
def test_each_engines_oom_text_is_recognised(engine: str, status: int, message: str) -> None:
    assert oom_source(message) == engine
    err = classify_oom(status, message)
    assert isinstance(err, EngineOutOfMemory) and err.kind == OOM_ERROR_TYPE and err.retryable and err.status == status


@pytest.mark.parametrize(("status", "message"), NOT_OOM)
def test_other_errors_are_not_oom(status: int, message: str) -> None:
    assert classify_oom(status, message) is None


def test_raised_errors_of_other_libraries() -> None:
    class InferenceServerException(Exception):  # tritonclient's shape: the text in message(), the status apart
        def __init__(self, msg: str, status: str) -> None:
            super().__init__(msg)
            self._msg, self._status = msg, status

        def message(self) -> str:
            return self._msg

    triton = InferenceServerException("[StatusCode.INTERNAL] " + OOM_SAMPLES[7][2], "StatusCode.INTERNAL")
    assert (err := as_out_of_memory(triton)) is not None and err.source == "onnxruntime"
    assert as_out_of_memory(InferenceServerException("[StatusCode.INVALID_ARGUMENT] unexpected shape for input 'image'", "x")) is None
    assert as_out_of_memory(MemoryError()) is not None
    assert as_out_of_memory(RuntimeError(OOM_SAMPLES[0][2])) is not None
    assert as_out_of_memory(EngineError(500, "Compute error.")) is not None
    assert as_out_of_memory(EngineError(400, "bad request")) is None


def _engine(cls: type[LlamaCppEngine] | type[VllmEngine], handler: httpx.MockTransport) -> LlamaCppEngine | VllmEngine:
    return cls("http://engine", "m", httpx.AsyncClient(transport=handler))


async def _drain(engine: LlamaCppEngine | VllmEngine) -> None:
    async for _ in engine.stream(LlmInput(prompt="hi", max_tokens=4), seed=1):
        pass


LLAMACPP_ERROR = {"code": 500, "message": "Context size has been exceeded.", "type": "server_error"}


@pytest.mark.asyncio
async def test_llamacpp_oom_before_and_after_the_headers() -> None:
    """llama.cpp answers 500 with an error object, or (streaming, headers already sent) an in-band
    ``data: {"error": ...}`` event (tools/server/server-context.cpp, format_oai_sse)."""
    before = httpx.MockTransport(lambda r: httpx.Response(500, json={"error": LLAMACPP_ERROR}))
    inband = httpx.MockTransport(lambda r: httpx.Response(200, content=f"data: {json.dumps({'error': LLAMACPP_ERROR})}\n\n".encode(),
                                                          headers={"content-type": "text/event-stream"}))
    for transport in (before, inband):
        with pytest.raises(EngineOutOfMemory):
            await _drain(_engine(LlamaCppEngine, transport))
    refused = httpx.MockTransport(lambda r: httpx.Response(400, json={"error": {"code": 400, "type": "exceed_context_size_error",
                                                                                "message": "the request exceeds the available context size, try increasing it"}}))
    with pytest.raises(EngineError) as exc:
        await _drain(_engine(LlamaCppEngine, refused))
    assert exc.value.kind == "ContextLengthExceeded" and not exc.value.retryable


@pytest.mark.asyncio
async def test_vllm_oom_error_object() -> None:
    """vLLM's OpenAI server: ErrorResponse {"error": {message, type, param, code}} with the exception's text."""
    body = {"error": {"message": OOM_SAMPLES[0][2], "type": "InternalServerError", "param": None, "code": 500}}
    with pytest.raises(EngineOutOfMemory):
        await _drain(_engine(VllmEngine, httpx.MockTransport(lambda r: httpx.Response(500, json=body))))

"""Out-of-memory errors of every engine, recognised from the engine's own error text.

An engine that runs out of memory (GPU or host) for one request is alive and the request is not
bad: the same request may fit later, with a smaller batch, or on another endpoint. Each domain
decides what to do (LLM: the next endpoint after a number of OOMs; vision/recsys: split the
batch); this module only recognises the condition and names it with one error type,
``EngineOutOfMemory`` (the ``ApplicationError`` type Temporal records, see ``retry.py``).

The patterns below are the engines' literal texts; tests/unit/test_oom.py holds one sample of each
with where it comes from.
"""

from __future__ import annotations

import re
from typing import Final

from switchyard.common.engines.base import EngineError

# The error type (EngineError.kind, ApplicationError.type) of every OOM, whatever the engine.
OOM_ERROR_TYPE: Final = "EngineOutOfMemory"

_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    # PyTorch's caching allocator (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError): "CUDA out of
    # memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ..."; vLLM's OpenAI server
    # passes str(exception) as the message of its 500 error object (entrypoints/serve/
    # exception_handling/error_response.py: InternalServerError). The same text from Triton's
    # PyTorch backend ("PyTorch execute failure: CUDA out of memory. ...").
    ("torch", r"\b(?:CUDA|HIP|XPU|MPS) out of memory\b|\bOutOfMemoryError\b"),
    # The CUDA runtime's own string for cudaErrorMemoryAllocation ("CUDA error: out of memory",
    # onnxruntime's CUDA EP: "CUDA failure 2: out of memory"), and cuBLAS / cuDNN allocation failures.
    ("cuda", r"\bCUDA (?:error|failure \d+): out of memory\b|\bCUBLAS_STATUS_ALLOC_FAILED\b|\bCUDNN_STATUS_ALLOC_FAILED\b"),
    # onnxruntime's arena allocator (bfc_arena.cc, BFCArena::AllocateRawInternal): "Failed to allocate
    # memory for requested buffer of size N", in Python as "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION"
    # and through Triton's onnxruntime backend as "onnx runtime error 6: ..." (HTTP 500 / gRPC INTERNAL).
    ("onnxruntime", r"Failed to allocate memory for requested buffer of size \d+|\bBFCArena\b.*\bFailed to allocate\b"),
    # Triton's own allocators (pinned / CUDA memory pools) and TensorRT: "failed to allocate pinned
    # system memory", "Failed to allocate CUDA memory", "out of memory" in an inference error.
    ("triton", r"\bfailed to allocate (?:pinned system|CUDA|GPU|device) memory\b|\bOut of memory\b|\bout of memory\b"),
    # llama.cpp server (tools/server/server-context.cpp, after llama_decode fails): no room in the KV
    # cache even for a batch of one token -> "Context size has been exceeded." (500, server_error; the
    # request itself fitted the slot, else it is refused up front with 400 exceed_context_size_error);
    # a graph/buffer allocation failure (llama_decode < -1) -> "Compute error.". Streamed requests
    # get them in-band: data: {"error": {"code": 500, "message": ..., "type": "server_error"}}.
    ("llamacpp", r"^Context size has been exceeded\.$|^Compute error\.$|failed to find a memory slot for batch of size \d+"),
)
_COMPILED: Final = tuple((engine, re.compile(p, re.M)) for engine, p in _PATTERNS)


class EngineOutOfMemory(EngineError):
    """The engine ran out of memory for this request: retryable, and not a fault of the input."""

    def __init__(self, status: int, message: str, *, source: str = "") -> None:
        super().__init__(status, message, kind=OOM_ERROR_TYPE, retryable=True)
        self.source = source  # which engine's pattern matched (torch, onnxruntime, llamacpp, ...)


def oom_source(text: str) -> str | None:
    """Which engine's out-of-memory text ``text`` contains (``torch``, ``onnxruntime``, ...), else None."""
    for engine, pattern in _COMPILED:
        if pattern.search(text):
            return engine
    return None


def is_out_of_memory(text: str) -> bool:
    return oom_source(text) is not None


def classify_oom(status: int, message: str) -> EngineOutOfMemory | None:
    """An engine's error answer (status, message) as ``EngineOutOfMemory`` when it is one.

    A 4xx other than 413/429 is the request's fault whatever its text (never retried), so only
    5xx answers (and 429/413, which some servers use for memory pressure) are considered."""
    if 400 <= status < 500 and status not in (413, 429):
        return None
    source = oom_source(message)
    return EngineOutOfMemory(status, message, source=source) if source else None


def as_out_of_memory(exc: BaseException) -> EngineOutOfMemory | None:
    """Any raised error (an EngineError, tritonclient's InferenceServerException, an onnxruntime or
    torch exception) as ``EngineOutOfMemory`` when its text says the engine ran out of memory."""
    if isinstance(exc, EngineOutOfMemory):
        return exc
    if isinstance(exc, EngineError):
        return classify_oom(exc.status, exc.message)
    if isinstance(exc, MemoryError):
        return EngineOutOfMemory(507, f"{type(exc).__name__}: {exc}", source="python")
    # tritonclient's InferenceServerException keeps its text in message(), str() adds the status.
    message_of = getattr(exc, "message", None)
    message = str(message_of()) if callable(message_of) else str(exc)
    text = f"{type(exc).__name__}: {message}"
    source = oom_source(text)
    return EngineOutOfMemory(500, text[:2000], source=source) if source else None

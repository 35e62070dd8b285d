"""A fault injector (a test stand-in, not a Switchyard part) in front of the stack's real Triton: an
HTTP/1.1 proxy that answers inference requests with Triton's own error responses while a test asks
for them, and otherwise passes every request (health, metadata, shared-memory registration,
inference) through to Triton.

Faults, per Triton model:
- ``oom_above[model] = n``: a request whose batch (the first input's first dimension, read from the
  inference header) exceeds ``n`` gets the 500 that Triton's onnxruntime backend sends when the
  arena cannot allocate (``{"error": "onnx runtime error 6: ... Failed to allocate memory ..."}``);
- ``failing``: every inference request gets a 500 that is not about memory (Triton's onnxruntime
  backend on a wrong output buffer).

``counts``: (model, batch, what it got: ``oom``, ``failed``, ``passed``) of each inference request.
``vision_worker_behind(stack, injector)`` points the stack's vision worker at the injector meanwhile.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
from http_injector import HttpInjector  # pants: no-infer-dep (a test util beside this file)

from switchyard.devstack.stack import Stack

# What Triton's HTTP endpoint answers (500, {"error": ...}) when its onnxruntime backend's BFC arena
# fails to allocate (triton-inference-server/server#7019; tests/unit/test_oom.py holds the same text).
TRITON_ORT_OOM = ("onnx runtime error 6: Non-zero status code returned while running Conv node. Name:'Conv_0' Status Message: "
                  "/workspace/onnxruntime/onnxruntime/core/framework/bfc_arena.cc:368 void* onnxruntime::BFCArena::AllocateRawInternal"
                  "(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested "
                  "buffer of size 102760448")
# A failure that is not about memory (onnxruntime_backend: output buffer of the wrong size).
TRITON_ORT_FAILURE = "onnx runtime error 2: not enough space: expected 318080, got 314240"
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class TritonFaultInjector(HttpInjector):
    def __init__(self, triton_port: int) -> None:
        super().__init__("triton-fault-injector")  # HTTP/1.1 keep-alive, as Triton: the worker's lean client pools connections
        self.target = f"http://127.0.0.1:{triton_port}"
        self.oom_above: dict[str, int] = {}
        self.failing: set[str] = set()
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self._lock = threading.Lock()
        self._upstream = httpx.Client(timeout=60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TritonFaultInjector:
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self._upstream.close()

    def clear(self) -> None:
        with self._lock:
            self.oom_above.clear()
            self.failing.clear()
            self.counts.clear()

    def _fault(self, model: str, batch: int) -> str | None:
        with self._lock:
            if model in self.failing:
                return "failed"
            limit = self.oom_above.get(model)
            return "oom" if limit is not None and batch > limit else None

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("content-length") or 0))
        if req.command == "POST" and (m := INFER_PATH.match(req.path)):
            model = m.group(1)
            header_len = int(req.headers.get("inference-header-content-length") or len(body))
            batch = int(json.loads(body[:header_len])["inputs"][0]["shape"][0])
            fault = self._fault(model, batch)
            with self._lock:
                self.counts[(model, batch, fault or "passed")] += 1
            if fault is not None:
                error = TRITON_ORT_OOM if fault == "oom" else TRITON_ORT_FAILURE
                self.answer(req, 500, {"Content-Type": "application/json"}, json.dumps({"error": error}).encode())
                return
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        r = self._upstream.request(req.command, self.target + req.path, content=body, headers=headers)
        self.answer(req, r.status_code, {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}, r.content)


@contextlib.contextmanager
def vision_worker_behind(stack: Stack, injector: TritonFaultInjector) -> Iterator[None]:
    """The stack's vision worker restarted with Triton's address set to the injector's; restarted
    as it was afterwards."""
    worker = stack.procs["worker-vision"]
    env = worker.env
    worker.stop()
    worker.env = {**env, "SWITCHYARD_TRITON_URL": injector.address}
    try:
        worker.start()
        worker.wait_ready()
        yield
    finally:
        worker.stop()
        worker.env = env
        worker.start()
        worker.wait_ready()

"""Inference backends of the V2 models (``infer`` steps): one interface, two implementations.

``TritonBackend`` calls a model on Triton Inference Server (KServe V2 over HTTP, binary tensors, via
the official ``tritonclient``); ``OnnxRuntimeBackend`` runs the same ONNX file in this process.
Either can sit behind any ``infer`` step of a V2 model (see switchyard.common.v2.config); the vision
and recsys workers open the backends of their domain's models with ``make_backends``.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
import onnxruntime as ort
import tritonclient.http.aio as triton_http
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from switchyard.common import tracing
from switchyard.common.engines.oom import as_out_of_memory
from switchyard.common.http1 import Http1Client
from switchyard.common.v2.config import Backend
from switchyard.common.v2.errors import V2Error, error_message
from switchyard.common.v2.triton_shm import ShmPool


class InferBackend(Protocol):
    name: str

    async def infer(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class TritonBackend:
    """Inference requests go through ``http`` (lean, see switchyard.common.http1), everything else
    (metadata, readiness) through tritonclient's own client."""

    def __init__(self, name: str, model: str, client: triton_http.InferenceServerClient, http: Http1Client, shm: ShmPool | None = None) -> None:
        self.name = name
        self.model = model
        self._client = client
        self._http = http
        self._path = f"/v2/models/{quote(model)}/infer"
        self._shm = shm
        self._io: tuple[str, str] | None = None

    async def _names(self) -> tuple[str, str]:
        if self._io is None:
            meta = await self._client.get_model_metadata(self.model)
            self._io = (meta["inputs"][0]["name"], meta["outputs"][0]["name"])
        return self._io

    async def _call(self, batch: np.ndarray[Any, Any], shm_offset: int | None) -> np.ndarray[Any, Any]:
        if not tracing.enabled():
            return await self._request(batch, shm_offset)
        # One CLIENT span per request to Triton; Triton (with tracing on) continues its traceparent.
        with tracing.client_span(f"infer {self.model}", f"http://{self._http.host}:{self._http.port}{self._path}",
                                 {"switchyard.engine": "triton", "switchyard.backend": self.name, "switchyard.batch": int(batch.shape[0]),
                                  "switchyard.shared_memory": shm_offset is not None}):
            return await self._request(batch, shm_offset)

    async def _request(self, batch: np.ndarray[Any, Any], shm_offset: int | None) -> np.ndarray[Any, Any]:
        in_name, out_name = await self._names()
        inp = triton_http.InferInput(in_name, list(batch.shape), np_to_triton_dtype(batch.dtype))
        if shm_offset is None:
            inp.set_data_from_numpy(batch, binary_data=True)
        else:
            assert self._shm is not None
            inp.set_shared_memory(self._shm.name, batch.nbytes, offset=shm_offset)
        body, json_size = triton_http.InferenceServerClient.generate_request_body([inp], outputs=[triton_http.InferRequestedOutput(out_name, binary_data=True)])
        headers = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        tracing.inject(headers)
        r = await self._http.request("POST", self._path, body, headers)
        if r.status != 200:
            raise InferenceServerException(msg=error_message(r.body, r.body[:200].decode("utf-8", "replace")), status=str(r.status))
        result = triton_http.InferenceServerClient.parse_response_body(r.body, header_length=r.headers.get("inference-header-content-length"))
        out = result.as_numpy(out_name)
        if out is None:
            raise V2Error(503, f"backend {self.name}: Triton returned no '{out_name}'")
        return np.asarray(out)

    async def infer(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        try:
            async with self._shm.slot(batch) if self._shm else nullcontext(None) as offset:
                try:
                    return await self._call(batch, offset)
                except InferenceServerException as e:
                    if offset is None or self._shm is None or "shared memory" not in str(e.message()):
                        raise
                    self._shm.invalidate()  # Triton restarted and forgot the region: send this one as a body
                    return await self._call(batch, None)
        except InferenceServerException as e:
            status = int(e.status()) if str(e.status() or "").isdigit() else 503
            raise V2Error(400 if status == 400 else 503, f"backend {self.name} (Triton model {self.model}): {e.message()}") from None
        except (TimeoutError, OSError) as e:
            raise V2Error(503, f"backend {self.name}: Triton unreachable ({e!r})") from None

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model))
        except (TimeoutError, InferenceServerException, OSError):
            return False

    async def close(self) -> None:
        pass  # the client is shared; its owner closes it


class OnnxRuntimeBackend:
    """``inline``: run on the event loop instead of a thread, for models that take well under a
    millisecond (the recsys ranker), where the hand-off to a thread and back costs more than the model."""

    def __init__(self, name: str, path: Path, threads: int = 2, inline: bool = False) -> None:
        self.name = name
        self.inline = inline
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._in = self._session.get_inputs()[0].name
        self._out = self._session.get_outputs()[0].name

    async def infer(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        with tracing.internal_span(f"onnxruntime {self.name}", {"switchyard.engine": "onnxruntime", "switchyard.backend": self.name,
                                                                "switchyard.batch": int(batch.shape[0])}):
            try:
                if self.inline:
                    (out,) = self._session.run([self._out], {self._in: batch})
                else:  # onnxruntime releases the GIL: run it beside the event loop
                    (out,) = await asyncio.to_thread(self._session.run, [self._out], {self._in: batch})
            except Exception as e:  # onnxruntime's own (RuntimeException, Fail): out of memory keeps its text for the job lane
                if (oom := as_out_of_memory(e)) is not None:
                    raise V2Error(503, f"backend {self.name}: {oom.message}") from None
                raise
        return np.asarray(out)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def make_backends(backends: dict[str, Backend], model_dir: Path, triton: triton_http.InferenceServerClient, http: Http1Client,
                  shm: ShmPool | None = None, *, onnx_threads: int = 2, onnx_inline: bool = False) -> dict[str, InferBackend]:
    out: dict[str, InferBackend] = {}
    for name, b in backends.items():
        if b.engine == "triton":
            out[name] = TritonBackend(name, b.model, triton, http, shm)
        else:
            path = model_dir / b.model
            if not path.exists():
                raise FileNotFoundError(f"backend {name}: {path} not found (the domain's build-support/setup-<domain>.sh builds it; ./switchyard setup runs them all)")
            out[name] = OnnxRuntimeBackend(name, path, onnx_threads, onnx_inline)
    return out

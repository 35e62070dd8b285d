"""A data plane that runs its models in this process (a worker): it decodes requests (REST and
gRPC), refuses bad classification requests before running anything, runs the model (``execute``,
the worker's own), applies the classification extension and counts statistics. ``inputs``,
``wanted_outputs`` and ``response`` are the checks and the answer every ``execute`` shares.

Every lane of a worker goes through ``infer``: the REST and gRPC front ends and the durable lane's
activities.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter_ns
from typing import Any, ClassVar

import numpy as np

from switchyard.common.v2 import classification, compute
from switchyard.common.v2 import grpc_predict_v2_pb2 as pb
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.dataplane import DataPlane
from switchyard.common.v2.errors import V2Error, error_body
from switchyard.common.v2.grpc_codec import parse_message, request_from_pb, response_to_pb
from switchyard.common.v2.rest import HEADER_LENGTH, encode_response, parse_request
from switchyard.common.v2.statistics import Statistics, StatisticsResponse
from switchyard.common.v2.tensors import DTYPES, InferRequest, InferResponse, Tensor

log = logging.getLogger("switchyard.v2")

Array = np.ndarray[Any, Any]


class LocalDataPlane(DataPlane):
    # Appended to the message of an input whose shape does not match (e.g. "(one user per request)").
    shape_note: ClassVar[str] = ""

    def __init__(self, server_name: str, label_dir: Path) -> None:
        super().__init__(server_name)
        self.label_dir = label_dir
        self.models: dict[str, V2Model] = {}
        self.stats = Statistics()
        self._labels: dict[str, Array] = {}

    def known_models(self) -> Iterable[V2Model]:
        return self.models.values()

    def find(self, name: str) -> V2Model | None:
        return self.models.get(name)

    def labels(self, file: str) -> Array:
        """A labels file of ``label_dir`` (one per line) as bytes, read once."""
        if file not in self._labels:
            path = self.label_dir / file
            if not path.exists():
                raise FileNotFoundError(f"labels file {path} not found (run build-support/setup-vision.sh)")
            self._labels[file] = np.array([line.encode() for line in path.read_text().splitlines() if line], dtype=object)
        return self._labels[file]

    def serve(self, models: dict[str, V2Model]) -> None:
        """Serve these models; their outputs' labels files are read first (a missing one raises)."""
        for m in models.values():
            for o in m.outputs:
                if o.labels:
                    self.labels(o.labels)
        self.models = models

    # ------------------------------------------------------------ request checks

    def inputs(self, m: V2Model, tensors: list[Tensor]) -> dict[str, Array]:
        """The request's inputs by name, checked against ``m``: known names, each once, datatype,
        shape, one batch size within the model's limit, every required input given (400 otherwise)."""
        values: dict[str, Array] = {}
        batch: int | None = None
        for t in tensors:
            spec = m.input(t.name)
            if spec is None:
                raise V2Error(400, f"model '{m.name}' has no input '{t.name}' (inputs: {', '.join(i.name for i in m.inputs)})")
            if t.name in values:
                raise V2Error(400, f"input '{t.name}' given twice")
            if t.datatype != spec.datatype:
                raise V2Error(400, f"input '{t.name}': datatype {t.datatype}, model '{m.name}' expects {spec.datatype}")
            shape = t.shape
            if len(shape) != len(spec.shape) or any(want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)):
                raise V2Error(400, f"input '{t.name}': shape {shape} does not match {spec.shape}" + (f" {self.shape_note}" if self.shape_note else ""))
            if not 1 <= shape[0] <= m.max_batch_size:
                raise V2Error(400, f"input '{t.name}': batch of {shape[0]}; model '{m.name}' takes 1 to {m.max_batch_size}")
            if batch is not None and shape[0] != batch:
                raise V2Error(400, f"inputs disagree on the batch size ({batch} vs {shape[0]})")
            batch = shape[0]
            self.check_input(m, t)
            values[t.name] = t.data
        missing = [i.name for i in m.inputs if not i.optional and i.name not in values]
        if missing:
            raise V2Error(400, f"model '{m.name}' needs input(s) {', '.join(missing)}")
        return values

    def check_input(self, m: V2Model, t: Tensor) -> None:
        """A worker's own check of one input's values, after the shared ones (raise a 400 V2Error)."""

    @staticmethod
    def wanted_outputs(m: V2Model, req: InferRequest) -> list[str]:
        """The outputs the request asks for (all of the model's when it names none); an unknown one is a 400."""
        wanted = [o.name for o in req.outputs] if req.outputs else [o.name for o in m.outputs]
        for name in wanted:
            if m.output(name) is None:
                raise V2Error(400, f"model '{m.name}' has no output '{name}' (outputs: {', '.join(o.name for o in m.outputs)})")
        return wanted

    @staticmethod
    def response(m: V2Model, req: InferRequest, wanted: list[str], values: dict[str, Array]) -> InferResponse:
        """The answer: the ``wanted`` tensors of ``values`` in the datatypes the model declares."""
        outputs = []
        for name in wanted:
            spec = m.output(name)
            assert spec is not None
            data = values[name]
            outputs.append(Tensor(name, spec.datatype, data if spec.datatype == "BYTES" else data.astype(DTYPES[spec.datatype], copy=False)))
        return InferResponse(model=m.name, version=req.version or m.versions[-1], outputs=outputs, id=req.id)

    # ------------------------------------------------------------ inference

    @abstractmethod
    async def execute(self, req: InferRequest, model: V2Model) -> InferResponse:
        """Run ``model`` on ``req``: its inputs checked against the model, its requested outputs answered."""

    async def infer(self, req: InferRequest, model: V2Model | None = None, *, started_ns: int | None = None) -> InferResponse:
        """``model``: run this declaration instead of the served one (a job's catalog snapshot).
        ``started_ns``: when decoding the request began (``perf_counter_ns``), for statistics."""
        m = model or self.model(req.model, req.version)
        begin = perf_counter_ns()
        classified = [o for o in req.outputs if o.classification] if req.outputs else None
        try:
            if classified:
                classification.check(m, classified)
            resp = await self.execute(req, m)
            computed = perf_counter_ns()
            if classified:
                counts = {o.name: o.classification for o in classified}
                resp.outputs = [self._classify(m, t, n) if (n := counts.get(t.name)) else t for t in resp.outputs]
        except Exception:
            self.stats.failure(m.name, req.version or m.versions[-1], perf_counter_ns() - (started_ns or begin))
            raise
        batch = req.inputs[0].data.shape[0] if req.inputs and req.inputs[0].data.ndim else 1
        compute.report((computed - begin) / 1e6, batch)  # the API's X-Switchyard-Overhead-Ms subtracts it
        self.stats.success(m.name, req.version or m.versions[-1], batch, begin - (started_ns or begin), computed - begin, perf_counter_ns() - computed)
        return resp

    def _classify(self, m: V2Model, t: Tensor, n: int) -> Tensor:
        spec = m.output(t.name)
        return classification.classify(t, n, self.labels(spec.labels) if spec is not None and spec.labels else None)

    async def infer_rest(self, name: str, version: str | None, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        start = perf_counter_ns()
        try:
            req = parse_request(name, version, body, headers.get(HEADER_LENGTH))
            out, out_headers = encode_response(await self.infer(req, started_ns=start), req)
        except V2Error:
            raise
        except Exception:
            log.exception("inference failed")
            return 500, error_body(f"internal error in {self.server_name}"), {"content-type": "application/json"}
        return 200, out, out_headers

    async def infer_grpc(self, request: bytes, timeout_s: float | None) -> bytes:
        start = perf_counter_ns()
        req = request_from_pb(parse_message(pb.ModelInferRequest, request))
        return bytes(response_to_pb(await self.infer(req, started_ns=start)).SerializeToString())

    async def statistics(self, name: str | None = None, version: str | None = None) -> StatisticsResponse:
        if name:
            m = self.model(name, version)
            return self.stats.report([(m.name, v) for v in ([version] if version else m.versions)])
        return self.stats.report([(m.name, v) for m in self.models.values() for v in m.versions])

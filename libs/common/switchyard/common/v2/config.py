"""V2 models: what each worker serves over KServe V2, declared as a DAG of steps across backends.

They are declared in the model catalog (switchyard.common.catalog) beside the LLM models, read by
the API (routing, metadata, durable-lane validation) and by the workers (execution). A model is an ensemble: named values flow from the model's inputs through steps (decode and
resize, inference on a backend, combining, top-k) to its outputs. Steps whose inputs are ready run
concurrently, so two backends can score the same batch at once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchyard.common.queues import Domain
from switchyard.common.shadow.spec import ShadowSpec

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# op → (min inputs, max inputs or None, outputs): the contract every worker's implementation keeps.
OPS: dict[str, tuple[int, int | None, int]] = {
    "preprocess": (1, 1, 1),  # BYTES images → FP32 [N, 3, H, W]
    "infer": (1, 1, 1),  # a backend model: tensor → tensor
    "average_probs": (2, None, 1),  # softmax of each input, averaged (model ensembles)
    "topk": (1, 1, 2),  # logits/probabilities → labels (BYTES [N, k]), scores (FP32 [N, k])
    # recsys (worker-recsys): user_id INT64 [1] and optional candidates INT64 [1, C] → ranker
    # features FP32 [M, F], their item_ids INT64 [M], reasons BYTES [M], unknown_items INT64 [1, U]
    "features": (1, 2, 4),
    # ranker scores [M, 1], item_ids [M], reasons [M] → the k best: item_ids INT64 [1, k],
    # scores FP32 [1, k], reasons BYTES [1, k] (k from the request parameter k or the model's)
    "rank": (3, 3, 3),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str = Field(pattern=NAME, max_length=64)
    datatype: Datatype
    # -1: any size. The first dimension is the batch.
    shape: list[int] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _dims(self) -> TensorSpec:
        if any(d == 0 or d < -1 for d in self.shape):
            raise ValueError(f"tensor {self.name}: dimensions are -1 or positive, got {self.shape}")
        return self


class InputSpec(TensorSpec):
    # Image layout of a [batch, 3 dims] input, as Triton's model configuration states it (clients
    # such as Triton's image_client read it to lay out pixels).
    format: Literal["NONE", "NCHW", "NHWC"] = "NONE"
    # A request may leave it out (Triton's ``optional`` input), e.g. recsys candidates.
    optional: bool = False

    @model_validator(mode="after")
    def _format(self) -> InputSpec:
        if self.format != "NONE" and len(self.shape) != 4:
            raise ValueError(f"input {self.name}: format {self.format} needs a [batch, 3 dims] shape, got {self.shape}")
        return self


class OutputSpec(TensorSpec):
    # Labels file (one per line, in the worker's model directory) of a numeric output: the
    # classification extension answers "value:index:label" with them.
    labels: str | None = Field(default=None, pattern=NAME, max_length=128)

    @model_validator(mode="after")
    def _labels(self) -> OutputSpec:
        if self.labels is not None and self.datatype in ("BYTES", "BOOL"):
            raise ValueError(f"output {self.name}: labels are for numeric outputs, not {self.datatype}")
        return self


# What V2 model metadata shows of a tensor spec (the rest is model configuration).
METADATA_FIELDS = {"name", "datatype", "shape"}


# Engines a V2 backend can run on (the workers' InferBackend implementations).
V2_ENGINES = ("triton", "onnxruntime")


class Backend(_Strict):
    engine: Literal["triton", "onnxruntime"]
    # Triton: the model name on the server; onnxruntime: the .onnx file (relative to the model dir).
    model: str = Field(min_length=1)


class Step(_Strict):
    name: str = Field(pattern=NAME)
    op: str
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(min_length=1)
    backend: str | None = None
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _arity(self) -> Step:
        if self.op not in OPS:
            raise ValueError(f"step {self.name}: unknown op {self.op!r} (known: {', '.join(OPS)})")
        lo, hi, n_out = OPS[self.op]
        if len(self.inputs) < lo or (hi is not None and len(self.inputs) > hi):
            raise ValueError(f"step {self.name}: {self.op} takes {lo}{'' if hi == lo else '+' if hi is None else f'-{hi}'} inputs, got {len(self.inputs)}")
        if len(self.outputs) != n_out:
            raise ValueError(f"step {self.name}: {self.op} produces {n_out} outputs, got {len(self.outputs)}")
        if (self.op == "infer") != (self.backend is not None):
            raise ValueError(f"step {self.name}: 'backend' is required by infer and only by infer")
        return self


class V2Model(_Strict):
    name: str = Field(pattern=NAME, max_length=128)
    domain: Domain
    # classifier: image in, labels + scores out; ranker: items in, scores out; tensor: anything else.
    kind: Literal["classifier", "ranker", "tensor"] = "tensor"
    description: str = ""
    versions: list[str] = ["1"]
    platform: str = "switchyard_ensemble"
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1)
    # Defaults a request may override with its own parameters (e.g. top_k).
    parameters: dict[str, int | float | str | bool] = {}
    # Shadow deployment (docs/shadow.md): a share of answered realtime requests replayed on a candidate.
    shadow: ShadowSpec | None = None

    @model_validator(mode="after")
    def _dag(self) -> V2Model:
        self.levels()  # raises on cycles, unknown or duplicate values
        produced = {o for s in self.steps for o in s.outputs}
        missing = [o.name for o in self.outputs if o.name not in produced]
        if missing:
            raise ValueError(f"model {self.name}: outputs {missing} are produced by no step")
        consumed = {i for s in self.steps for i in s.inputs} | {o.name for o in self.outputs}
        dead = [s.name for s in self.steps if not any(o in consumed for o in s.outputs)]
        if dead:
            raise ValueError(f"model {self.name}: steps {dead} are unreachable: their outputs feed no step and no model output")
        if self.kind == "classifier" and self.image_input() is None:
            raise ValueError(f"model {self.name}: a classifier takes one BYTES input (images) and gives 'labels' and 'scores'")
        return self

    def input(self, name: str) -> InputSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> OutputSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def image_input(self) -> str | None:
        """The BYTES input of an image classifier (one image per batch row, labels + scores out):
        the models the durable lane's vision jobs can use."""
        if len(self.inputs) == 1 and self.inputs[0].datatype == "BYTES" and self.output("labels") and self.output("scores"):
            return self.inputs[0].name
        return None

    def levels(self) -> list[list[Step]]:
        """Steps in dependency order, grouped so that each group only needs earlier groups."""
        known = {t.name for t in self.inputs}
        seen: set[str] = set(known)
        for s in self.steps:
            dup = [o for o in s.outputs if o in seen]
            if dup:
                raise ValueError(f"model {self.name}: value {dup[0]!r} is produced twice")
            seen.update(s.outputs)
        pending = list(self.steps)
        levels: list[list[Step]] = []
        while pending:
            ready = [s for s in pending if all(i in known for i in s.inputs)]
            if not ready:
                unknown = sorted({i for s in pending for i in s.inputs if i not in seen})
                why = f"unknown values {unknown}" if unknown else "a cycle"
                raise ValueError(f"model {self.name}: steps {[s.name for s in pending]} cannot run: {why}")
            levels.append(ready)
            for s in ready:
                known.update(s.outputs)
            pending = [s for s in pending if s not in ready]
        return levels

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata object (REST body; gRPC has the same fields)."""
        return {"name": self.name, "versions": self.versions, "platform": self.platform,
                "inputs": [t.model_dump(include=METADATA_FIELDS) for t in self.inputs],
                "outputs": [t.model_dump(include=METADATA_FIELDS) for t in self.outputs]}

    def triton_config(self) -> dict[str, Any]:
        """Triton's model configuration (the model_configuration extension; REST body, gRPC
        ``ModelConfig`` has the same fields). Dimensions leave out the batch dimension, as Triton's do."""
        return {"name": self.name, "platform": self.platform, "backend": "", "max_batch_size": self.max_batch_size,
                "input": [{"name": t.name, "data_type": triton_type(t.datatype), "format": f"FORMAT_{t.format}", "dims": t.shape[1:],
                           "optional": t.optional} for t in self.inputs],
                "output": [{"name": t.name, "data_type": triton_type(t.datatype), "dims": t.shape[1:], "label_filename": t.labels or ""} for t in self.outputs]}


def triton_type(datatype: str) -> str:
    """A V2 datatype as Triton's model configuration names it (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


class V2Config(_Strict):
    backends: dict[str, Backend] = {}
    models: list[V2Model]

    @model_validator(mode="after")
    def _refs(self) -> V2Config:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {dupes}")
        for m in self.models:
            for s in m.steps:
                if s.backend is not None and s.backend not in self.backends:
                    raise ValueError(f"model {m.name}, step {s.name}: unknown backend {s.backend!r} (declared: {sorted(self.backends)})")
        return self

    def get(self, name: str) -> V2Model | None:
        return next((m for m in self.models if m.name == name), None)

    def for_domain(self, domain: str) -> list[V2Model]:
        return [m for m in self.models if m.domain == domain]

    def backends_for(self, domain: str) -> dict[str, Backend]:
        """The backends the domain's models use: what its worker opens (another domain's model files
        are not on its disk)."""
        used = {s.backend for m in self.for_domain(domain) for s in m.steps if s.backend}
        return {n: b for n, b in self.backends.items() if n in used}

"""Triton's statistics extension: per model version, how many requests succeeded or failed and
where their time went, counted by the data plane that runs inference (a worker's LocalDataPlane;
the API's gateway asks its workers). REST answers the JSON below, gRPC ``ModelStatisticsResponse``.

Switchyard has no queue before a model: ``queue`` counts requests with 0 ns. ``compute_input`` is
decoding the request, ``compute_infer`` running the model, ``compute_output`` preparing its outputs
(classification included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import BaseModel, Field


class StatisticDuration(BaseModel):
    count: int = 0
    ns: int = 0


class InferStatistics(BaseModel):
    success: StatisticDuration = Field(default_factory=StatisticDuration)
    fail: StatisticDuration = Field(default_factory=StatisticDuration)
    queue: StatisticDuration = Field(default_factory=StatisticDuration)
    compute_input: StatisticDuration = Field(default_factory=StatisticDuration)
    compute_infer: StatisticDuration = Field(default_factory=StatisticDuration)
    compute_output: StatisticDuration = Field(default_factory=StatisticDuration)


class ModelStatistics(BaseModel):
    name: str
    version: str
    # Milliseconds since the epoch; 0 before the first inference.
    last_inference: int = 0
    # Batch rows, and requests, inferred successfully.
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: InferStatistics = Field(default_factory=InferStatistics)


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStatistics]


@dataclass(slots=True)
class _Counters:
    """One model version's counters: plain attributes on the hot path (a pydantic model's
    validated assignments cost ~10 µs a request); reported as ``ModelStatistics``. Every successful
    request counts once in success, queue and each compute phase, as in Triton."""

    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0

    def report(self, name: str, version: str) -> ModelStatistics:
        n = self.execution_count
        stats = InferStatistics(success=StatisticDuration(count=n, ns=self.success_ns), fail=StatisticDuration(count=self.fail_count, ns=self.fail_ns),
                                queue=StatisticDuration(count=n), compute_input=StatisticDuration(count=n, ns=self.input_ns),
                                compute_infer=StatisticDuration(count=n, ns=self.infer_ns), compute_output=StatisticDuration(count=n, ns=self.output_ns))
        return ModelStatistics(name=name, version=version, last_inference=self.last_inference, inference_count=self.inference_count,
                               execution_count=n, inference_stats=stats)


class Statistics:
    """Counters of one process, per (model, version)."""

    def __init__(self) -> None:
        self._by_model: dict[tuple[str, str], _Counters] = {}

    def _of(self, name: str, version: str) -> _Counters:
        c = self._by_model.get((name, version))
        if c is None:
            c = self._by_model[(name, version)] = _Counters()
        return c

    def success(self, name: str, version: str, batch: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        c = self._of(name, version)
        c.last_inference = int(time.time() * 1000)
        c.inference_count += batch
        c.execution_count += 1
        c.success_ns += input_ns + infer_ns + output_ns
        c.input_ns += input_ns
        c.infer_ns += infer_ns
        c.output_ns += output_ns

    def failure(self, name: str, version: str, ns: int) -> None:
        c = self._of(name, version)
        c.fail_count += 1
        c.fail_ns += ns

    def report(self, versions: list[tuple[str, str]]) -> StatisticsResponse:
        """The statistics of these (model, version)s, zero for those never asked for."""
        return StatisticsResponse(model_stats=[(self._by_model.get(v) or _Counters()).report(*v) for v in versions])

"""The durable lane: classify a job's images with the same data plane the realtime lane uses."""

from __future__ import annotations

from typing import Any

import numpy as np
from temporalio import activity

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, Prediction, VisionClassification, VisionInput
from switchyard.common.v2.job_lane import JobAttempt, unknown_model
from switchyard.common.v2.tensors import InferRequest, Tensor
from switchyard.worker_vision.dataplane import VisionDataPlane

WHAT = "an image classifier"


def _bytes_tensor(name: str, items: list[bytes]) -> Tensor:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return Tensor(name, "BYTES", arr)


class VisionActivities:
    def __init__(self, books: JobBookkeeping, plane: VisionDataPlane, chunk: int) -> None:
        self.books = books
        self.plane = plane
        self.chunk = chunk

    @activity.defn(name="vision.classify")
    async def classify(self, spec: JobSpec) -> VisionClassification:
        attempt = JobAttempt(spec, self.books, self.plane, "vision", WHAT)
        image_input = attempt.model.image_input()
        if image_input is None:
            raise unknown_model(spec, WHAT)
        inp = VisionInput.model_validate(await self.books.job_input(spec))
        images = inp.decoded()

        async def classify_chunk(start: int, end: int) -> list[list[dict[str, Any]]]:
            req = InferRequest(model=spec.model, inputs=[_bytes_tensor(image_input, images[start:end])], parameters={"top_k": inp.top_k})
            out = await attempt.infer(req, f"images {start}..{end - 1}")
            return [[{"label": lab.decode(), "score": float(sc)} for lab, sc in zip(labels, scores, strict=True)]
                    for labels, scores in zip(out["labels"], out["scores"], strict=True)]

        done = await attempt.chunks(len(images), self.chunk, classify_chunk)
        return VisionClassification(predictions=[[Prediction(**p) for p in row] for row in done], timings=attempt.timings())

"""The durable lane: classify a job's images with the same data plane the realtime lane uses."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, Prediction, Timings, VisionClassification, VisionInput
from switchyard.common.temporal import heartbeating
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.common.v2.tensors import InferRequest, Tensor
from switchyard.worker_vision.dataplane import VisionDataPlane


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
        started = time.time()
        # The model as accepted (the job's catalog snapshot), else as the worker serves it now.
        model = V2Model.model_validate(spec.model_spec["v2"]) if spec.model_spec and "v2" in spec.model_spec else self.plane.models.get(spec.model)
        image_input = model.image_input() if model else None
        if model is None or image_input is None or any(s.backend and s.backend not in self.plane.backends for s in model.steps):
            raise ApplicationError(f"model {spec.model!r} is not an image classifier of this worker", type="UnknownModel", non_retryable=True)
        inp = VisionInput.model_validate(await self.books.job_input(spec))
        images = inp.decoded()
        await self.books.start_attempt(spec, started)
        # A retried attempt resumes after the chunks the previous one finished (heartbeat checkpoint).
        details = activity.info().heartbeat_details
        done: list[list[dict[str, Any]]] = list(details[0]) if details else []
        checkpoint: list[object] = [done]
        engine_s = 0.0  # time in the data plane (preprocessing and the backend): the job's engine time
        async with heartbeating(checkpoint):
            for start in range(len(done), len(images), self.chunk):
                batch = images[start:start + self.chunk]
                req = InferRequest(model=spec.model, inputs=[_bytes_tensor(image_input, batch)], parameters={"top_k": inp.top_k})
                t0 = time.perf_counter()
                try:
                    resp = await self.plane.infer(req, model)
                except V2Error as e:
                    kind = "InvalidInput" if 400 <= e.status < 500 else "BackendUnavailable"
                    raise ApplicationError(f"images {start}..{start + len(batch) - 1}: {e.message}", type=kind, non_retryable=kind == "InvalidInput") from None
                engine_s += time.perf_counter() - t0
                out = {t.name: t.data for t in resp.outputs}
                for labels, scores in zip(out["labels"], out["scores"], strict=True):
                    done.append([{"label": lab.decode(), "score": float(sc)} for lab, sc in zip(labels, scores, strict=True)])
                checkpoint[0] = done
                await self.books.bus.publish(spec.job_id, "progress", {"done": len(done), "total": len(images)})
        return VisionClassification(
            predictions=[[Prediction(**p) for p in row] for row in done],
            timings=Timings(queue_ms=max(0.0, started * 1000 - spec.accepted_at_ms), engine_ms=engine_s * 1000, total_ms=(time.time() - started) * 1000),
        )

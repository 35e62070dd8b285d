"""The vision data plane with its inputs counted: ``switchyard_items_total{domain="vision"}``.

Both lanes run the same ``infer`` (the durable lane's activity and the realtime lane's V2 front
ends), so one count here covers both; images of failed requests are not counted.
"""

from __future__ import annotations

from switchyard.common import metrics
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.tensors import InferRequest, InferResponse
from switchyard.worker_vision.dataplane import VisionDataPlane


class CountingVisionPlane(VisionDataPlane):
    async def infer(self, req: InferRequest, model: V2Model | None = None, *, started_ns: int | None = None) -> InferResponse:
        resp = await super().infer(req, model, started_ns=started_ns)
        name = model.name if model is not None else req.model
        images = req.inputs[0].data.shape[0] if req.inputs and req.inputs[0].data.ndim else 1
        metrics.ITEMS.labels(domain="vision", model=name).inc(images)
        return resp

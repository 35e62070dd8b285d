"""The durable lane: recommendations for a job's users with the same data plane the realtime lane uses."""

from __future__ import annotations

import time
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from switchyard.common import recsys
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, Recommendation, RecsysInput, RecsysRanking, Timings
from switchyard.common.temporal import heartbeating
from switchyard.common.v2.config import V2Model
from switchyard.common.v2.errors import V2Error
from switchyard.worker_recsys.dataplane import RecsysDataPlane


class RecsysActivities:
    def __init__(self, books: JobBookkeeping, plane: RecsysDataPlane, chunk: int) -> None:
        self.books = books
        self.plane = plane
        self.chunk = chunk

    @activity.defn(name="recsys.rank")
    async def rank(self, spec: JobSpec) -> RecsysRanking:
        started = time.time()
        # The model as accepted (the job's catalog snapshot), else as the worker serves it now.
        model = V2Model.model_validate(spec.model_spec["v2"]) if spec.model_spec and "v2" in spec.model_spec else self.plane.models.get(spec.model)
        if model is None or model.domain != "recsys" or any(s.backend and s.backend not in self.plane.backends for s in model.steps):
            raise ApplicationError(f"model {spec.model!r} is not a ranking model of this worker", type="UnknownModel", non_retryable=True)
        inp = RecsysInput.model_validate(await self.books.job_input(spec))
        await self.books.start_attempt(spec, started)
        # A retried attempt resumes after the users the previous one finished (heartbeat checkpoint):
        # while the feature store is down, attempts fail as retryable and the job waits (RECSYS_RETRY_POLICY).
        details = activity.info().heartbeat_details
        done: list[dict[str, Any]] = list(details[0]) if details else []
        checkpoint: list[object] = [done]
        engine_s = 0.0  # time in the data plane (feature reads, retrieval, the ranker): the job's engine time
        async with heartbeating(checkpoint):
            for start in range(len(done), len(inp.users), self.chunk):
                for user_id in inp.users[start:start + self.chunk]:
                    t0 = time.perf_counter()
                    try:
                        resp = await self.plane.infer(recsys.infer_request(spec.model, inp.query(user_id), spec.request_id), model)
                    except V2Error as e:
                        kind = "InvalidInput" if 400 <= e.status < 500 else "BackendUnavailable"
                        raise ApplicationError(f"user {user_id}: {e.message}", type=kind, non_retryable=kind == "InvalidInput") from None
                    engine_s += time.perf_counter() - t0
                    done.append(recsys.from_outputs(user_id, {t.name: t.data for t in resp.outputs}).model_dump())
                checkpoint[0] = done
                await self.books.bus.publish(spec.job_id, "progress", {"done": len(done), "total": len(inp.users)})
        return RecsysRanking(
            recommendations=[Recommendation.model_validate(r) for r in done],
            timings=Timings(queue_ms=max(0.0, started * 1000 - spec.accepted_at_ms), engine_ms=engine_s * 1000, total_ms=(time.time() - started) * 1000),
        )

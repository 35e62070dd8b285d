"""The durable lane: recommendations for a job's users with the same data plane the realtime lane uses."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from switchyard.common import recsys
from switchyard.common.bookkeeping import JobBookkeeping
from switchyard.common.contracts import JobSpec, Recommendation, RecsysInput, RecsysRanking
from switchyard.common.v2.job_lane import JobAttempt
from switchyard.worker_recsys.dataplane import RecsysDataPlane


class RecsysActivities:
    def __init__(self, books: JobBookkeeping, plane: RecsysDataPlane, chunk: int) -> None:
        self.books = books
        self.plane = plane
        self.chunk = chunk

    @activity.defn(name="recsys.rank")
    async def rank(self, spec: JobSpec) -> RecsysRanking:
        attempt = JobAttempt(spec, self.books, self.plane, "recsys", "a ranking model")
        inp = RecsysInput.model_validate(await self.books.job_input(spec))

        async def rank_chunk(start: int, end: int) -> list[dict[str, Any]]:
            return [recsys.from_outputs(user_id, await attempt.infer(recsys.infer_request(spec.model, inp.query(user_id), spec.request_id), f"user {user_id}")).model_dump()
                    for user_id in inp.users[start:end]]

        # While the feature store is down, attempts fail as retryable and the job waits (RECSYS_RETRY_POLICY).
        done = await attempt.chunks(len(inp.users), self.chunk, rank_chunk)
        return RecsysRanking(recommendations=[Recommendation.model_validate(r) for r in done], timings=attempt.timings())

"""``RecsysJob``: recommendations for a batch of users, retried by Temporal, recorded when it ends."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from switchyard.common.contracts import JobOutcome, JobSpec, RecsysRanking
    from switchyard.common.jobflow import result_field, run_job
    from switchyard.common.retry import RECSYS_RETRY_POLICY


@workflow.defn(name="RecsysJob")
class RecsysJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        return await run_job(spec, "recsys.rank", RecsysRanking, result_field(spec, "recommendations"),
                             retry_policy=RECSYS_RETRY_POLICY, timeout=timedelta(minutes=10))

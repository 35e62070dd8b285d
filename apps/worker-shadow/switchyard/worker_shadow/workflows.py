"""``ShadowCompare``: one mirrored request replayed on its candidate and compared (one activity)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from temporalio.common import RetryPolicy

    from switchyard.common.shadow.spec import SHADOW_WORKFLOW, ShadowCase, ShadowComparison


@workflow.defn(name=SHADOW_WORKFLOW)
class ShadowCompareWorkflow:
    @workflow.run
    async def run(self, case: ShadowCase) -> ShadowComparison:
        # A candidate's own failure is a result (candidate_failed), not an activity failure: retries
        # are for the worker's (PostgreSQL, Redis, a worker lost mid-case).
        result: ShadowComparison = await workflow.execute_activity("shadow.compare", case, result_type=ShadowComparison,
                                                                   start_to_close_timeout=timedelta(minutes=5),
                                                                   retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1)))
        return result

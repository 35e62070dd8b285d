"""``LlmJob``: one generation, retried by Temporal, recorded when it ends."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from switchyard.common.contracts import JobError, JobOutcome, JobSpec, JobStatus, LlmGeneration
    from switchyard.common.retry import BOOKKEEPING_RETRY_POLICY, LLM_RETRY_POLICY
    from switchyard.common.temporal import HEARTBEAT_TIMEOUT


def error_of(exc: BaseException) -> JobError:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    kind = cause.type if isinstance(cause, ApplicationError) and cause.type else type(cause).__name__
    return JobError(type=kind or "Error", message=str(cause) or kind or "error")


@workflow.defn(name="LlmJob")
class LlmJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        try:
            gen: LlmGeneration = await workflow.execute_activity(
                "llm.generate",
                spec,
                result_type=LlmGeneration,
                start_to_close_timeout=timedelta(minutes=15),
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=LLM_RETRY_POLICY,
                # Wait until the engine request is really stopped before recording the cancel.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            outcome = JobOutcome(
                job_id=spec.job_id,
                status=JobStatus.succeeded,
                result={"text": gen.choices[0].text, "finish_reason": gen.choices[0].finish_reason,
                        "choices": [c.model_dump() for c in gen.choices], "endpoint": gen.endpoint},
                usage=gen.usage,
                timings=gen.timings,
            )
        except (asyncio.CancelledError, ActivityError) as e:
            # A cancelled job surfaces as CancelledError, or as ActivityError caused by one once
            # the activity has acknowledged the cancellation.
            if isinstance(e, asyncio.CancelledError) or isinstance(e.cause, CancelledError):
                await self._finish(JobOutcome(job_id=spec.job_id, status=JobStatus.cancelled))
                raise
            outcome = JobOutcome(job_id=spec.job_id, status=JobStatus.failed, error=error_of(e))
        await self._finish(outcome)
        return outcome

    async def _finish(self, outcome: JobOutcome) -> None:
        await workflow.execute_activity(
            "job.finish", outcome, start_to_close_timeout=timedelta(seconds=30), retry_policy=BOOKKEEPING_RETRY_POLICY
        )

"""The shape every domain's job workflow shares: run one activity, record how the job ended.

Workflows call ``run_job`` from their ``@workflow.run``; it must only use workflow-safe APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from switchyard.common.contracts import JobError, JobOutcome, JobSpec, JobStatus, Timings
from switchyard.common.retry import BOOKKEEPING_RETRY_POLICY
from switchyard.common.temporal import HEARTBEAT_TIMEOUT

R = TypeVar("R")


class TimedResult(Protocol):
    """An activity's result with its timings (e.g. VisionClassification)."""

    timings: Timings

    def model_dump(self) -> dict[str, Any]: ...


def error_of(exc: BaseException) -> JobError:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    kind = cause.type if isinstance(cause, ApplicationError) and cause.type else type(cause).__name__
    return JobError(type=kind or "Error", message=str(cause) or kind or "error")


async def finish(outcome: JobOutcome) -> None:
    await workflow.execute_activity("job.finish", outcome, start_to_close_timeout=timedelta(seconds=30), retry_policy=BOOKKEEPING_RETRY_POLICY)


def result_field(spec: JobSpec, field: str) -> Callable[[TimedResult], JobOutcome]:
    """``run_job``'s ``succeeded`` for a job whose result is one field of the activity's (e.g. ``predictions``)."""

    def succeeded(res: TimedResult) -> JobOutcome:
        return JobOutcome(job_id=spec.job_id, status=JobStatus.succeeded, result={field: res.model_dump()[field]}, timings=res.timings)

    return succeeded


async def run_job(spec: JobSpec, activity: str, result_type: type[R], succeeded: Callable[[R], JobOutcome], *,
                  retry_policy: RetryPolicy, timeout: timedelta) -> JobOutcome:
    try:
        result: Any = await workflow.execute_activity(
            activity,
            spec,
            result_type=result_type,
            start_to_close_timeout=timeout,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=retry_policy,
            # Wait until the engine work is really stopped before recording the cancel.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        outcome = succeeded(result)
    except (asyncio.CancelledError, ActivityError) as e:
        # A cancelled job surfaces as CancelledError, or as ActivityError caused by one once
        # the activity has acknowledged the cancellation.
        if isinstance(e, asyncio.CancelledError) or isinstance(e.cause, CancelledError):
            await finish(JobOutcome(job_id=spec.job_id, status=JobStatus.cancelled))
            raise
        outcome = JobOutcome(job_id=spec.job_id, status=JobStatus.failed, error=error_of(e))
    await finish(outcome)
    return outcome

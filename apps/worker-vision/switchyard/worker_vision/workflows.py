"""``VisionJob``: classify a batch of images, retried by Temporal, recorded when it ends."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus, VisionClassification
    from switchyard.common.jobflow import run_job
    from switchyard.common.retry import VISION_RETRY_POLICY


def _succeeded(spec: JobSpec, res: VisionClassification) -> JobOutcome:
    return JobOutcome(job_id=spec.job_id, status=JobStatus.succeeded, result={"predictions": res.model_dump()["predictions"]}, timings=res.timings)


@workflow.defn(name="VisionJob")
class VisionJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        return await run_job(spec, "vision.classify", VisionClassification, lambda res: _succeeded(spec, res),
                             retry_policy=VISION_RETRY_POLICY, timeout=timedelta(minutes=10))

"""``VisionJob``: classify a batch of images, retried by Temporal, recorded when it ends."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from switchyard.common.contracts import JobOutcome, JobSpec, VisionClassification
    from switchyard.common.jobflow import result_field, run_job
    from switchyard.common.retry import VISION_RETRY_POLICY


@workflow.defn(name="VisionJob")
class VisionJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        return await run_job(spec, "vision.classify", VisionClassification, result_field(spec, "predictions"),
                             retry_policy=VISION_RETRY_POLICY, timeout=timedelta(minutes=10))

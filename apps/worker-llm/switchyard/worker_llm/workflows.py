"""``LlmJob``: one generation, retried by Temporal, recorded when it ends."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus, LlmGeneration
    from switchyard.common.jobflow import run_job
    from switchyard.common.retry import LLM_RETRY_POLICY


def _succeeded(spec: JobSpec, gen: LlmGeneration) -> JobOutcome:
    return JobOutcome(
        job_id=spec.job_id,
        status=JobStatus.succeeded,
        result={"text": gen.choices[0].text, "finish_reason": gen.choices[0].finish_reason,
                "choices": [c.model_dump() for c in gen.choices], "endpoint": gen.endpoint},
        usage=gen.usage,
        timings=gen.timings,
    )


@workflow.defn(name="LlmJob")
class LlmJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        return await run_job(spec, "llm.generate", LlmGeneration, lambda gen: _succeeded(spec, gen),
                             retry_policy=LLM_RETRY_POLICY, timeout=timedelta(minutes=15))

"""``LlmJob``: one generation, retried by Temporal, recorded when it ends; a sampled share of a
shadowed model's jobs is then offered to the ``shadow`` queue (docs/shadow.md)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from datetime import timedelta

    from temporalio.common import RetryPolicy
    from temporalio.exceptions import ActivityError

    from switchyard.common.contracts import JobOutcome, JobSpec, JobStatus, LlmGeneration
    from switchyard.common.jobflow import run_job
    from switchyard.common.llm_generation import succeeded_outcome
    from switchyard.common.retry import LLM_RETRY_POLICY
    from switchyard.common.shadow.spec import ShadowOffer, ShadowSpec


def _shadow(spec: JobSpec) -> ShadowSpec | None:
    """The shadow the job's model had when the job was accepted (its catalog snapshot)."""
    shadow = ((spec.model_spec or {}).get("llm") or {}).get("shadow")
    return ShadowSpec.model_validate(shadow) if shadow else None


@workflow.defn(name="LlmJob")
class LlmJobWorkflow:
    @workflow.run
    async def run(self, spec: JobSpec) -> JobOutcome:
        outcome = await run_job(spec, "llm.generate", LlmGeneration, lambda gen: succeeded_outcome(spec, gen),
                                retry_policy=LLM_RETRY_POLICY, timeout=timedelta(minutes=15))
        shadow = _shadow(spec)
        # After job.finish: the client has its answer. Sampled with the workflow's deterministic random.
        if outcome.status is JobStatus.succeeded and shadow is not None and workflow.random().random() < shadow.sample_rate:
            try:
                await workflow.execute_activity("shadow.offer", ShadowOffer(spec=spec, outcome=outcome), start_to_close_timeout=timedelta(seconds=30),
                                                retry_policy=RetryPolicy(maximum_attempts=3))
            except ActivityError:
                workflow.logger.warning("shadow offer failed; the job is unaffected")
        return outcome

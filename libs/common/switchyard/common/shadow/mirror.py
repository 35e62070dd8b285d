"""Mirroring: a sampled, answered request becomes a ``ShadowCompare`` workflow on the ``shadow``
task queue, at the lowest priority, within the platform-wide budget (switchyard.common.shadow.budget).

The API (realtime V2 requests) hands cases to ``ShadowMirror.offer``, which only queues them in
memory: the Temporal call happens in a background task, after the client has its answer (the V2
request body kept aside in Redis, not in the workflow's input: switchyard.common.shadow.bodies); so do the
API's own runs of completions (fast start). The LLM worker sends its cases from an activity after the
job has ended (``send``). Every case ends in one
outcome of ``switchyard_shadow_cases`` (docs/metrics.md): mirrored, or dropped and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from typing import Any

from temporalio.client import Client
from temporalio.common import Priority, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from switchyard.common.contracts import JobOutcome, JobSpec
from switchyard.common.metrics import SHADOW_CASES
from switchyard.common.model_registry import ModelEntry
from switchyard.common.shadow.bodies import ShadowBodies
from switchyard.common.shadow.budget import ShadowBudget
from switchyard.common.shadow.spec import CASE_TIMEOUT, SHADOW_PRIORITY, SHADOW_QUEUE, SHADOW_WORKFLOW, LlmCall, ShadowCase, ShadowSpec

log = logging.getLogger("switchyard.shadow")


def sampled(shadow: ShadowSpec | None) -> bool:
    """Whether this request of a model with ``shadow`` is mirrored."""
    return shadow is not None and shadow.sample_rate > 0 and random.random() < shadow.sample_rate


def new_case_id() -> str:
    return uuid.uuid4().hex


def llm_case(spec: JobSpec, outcome: JobOutcome, entry: ModelEntry, candidate: ModelEntry, engine_input: dict[str, Any]) -> ShadowCase:
    """A finished LLM job's case: what the primary engine got (after the model's PII policy), its answer and timings."""
    result, usage, timings = outcome.result or {}, outcome.usage, outcome.timings
    return ShadowCase(case_id=spec.job_id, domain="llm", model=entry.name, candidate=candidate.name, candidate_spec=candidate.model_dump(mode="json"),
                      request_id=spec.request_id, primary_ms=(timings.total_ms if timings and timings.total_ms else 0.0),
                      llm=LlmCall(input=engine_input, text=str(result.get("text", "")), completion_tokens=usage.completion_tokens if usage else 0,
                                  ttft_ms=timings.ttft_ms if timings else None))


def case_bytes(case: ShadowCase) -> int:
    """The request and answer a case carries (what makes a Temporal payload, or the body kept aside, large)."""
    n = len(case.v2.body or b"") if case.v2 else 0
    n += len(case.v2_answer or b"")
    if case.llm:
        n += len(case.llm.text.encode()) + sum(len(str(v)) for v in case.llm.input.values())
    return n


async def send(client: Client, budget: ShadowBudget, case: ShadowCase, max_bytes: int, bodies: ShadowBodies | None = None) -> str:
    """Start the case's workflow if it fits the size limit and the budget; the outcome (counted).
    A V2 case's request body goes to ``bodies`` and the workflow gets the case without it."""
    if case.v2 is not None and bodies is None:
        raise ValueError("a V2 shadow case needs a body store")
    if case_bytes(case) > max_bytes:
        outcome = "dropped_too_large"
    elif not await budget.take(case.case_id):
        outcome = "dropped_backlog"
    else:
        try:
            if case.v2 is not None and case.v2.body is not None and bodies is not None:
                await bodies.put(case.case_id, case.v2.body)
                case = case.model_copy(update={"v2": case.v2.model_copy(update={"body": None})})
            await client.start_workflow(SHADOW_WORKFLOW, case, id=f"shadow-{case.case_id}", task_queue=SHADOW_QUEUE,
                                        priority=Priority(priority_key=SHADOW_PRIORITY), execution_timeout=CASE_TIMEOUT,
                                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
            outcome = "mirrored"
        except WorkflowAlreadyStartedError:
            outcome = "mirrored"  # a retried offer: the first one got through
        except Exception as e:  # shadow traffic never fails live work: counted and logged
            await budget.give_back(case.case_id)
            log.warning("shadow case not started", extra={"fields": {"model": case.model, "error": type(e).__name__}})
            outcome = "failed"
    SHADOW_CASES.labels(model=case.model, outcome=outcome).inc()
    return outcome


class ShadowMirror:
    """The API's mirror: ``offer`` queues in memory (microseconds, never blocks); one background task
    starts the workflows. A full queue drops the case (``dropped_queue``)."""

    def __init__(self, client: Client, budget: ShadowBudget, bodies: ShadowBodies, *, max_bytes: int, queue_size: int = 256) -> None:
        self.client, self.budget, self.bodies, self.max_bytes = client, budget, bodies, max_bytes
        self.queue: asyncio.Queue[ShadowCase] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def offer(self, case: ShadowCase) -> None:
        try:
            self.queue.put_nowait(case)
        except asyncio.QueueFull:
            SHADOW_CASES.labels(model=case.model, outcome="dropped_queue").inc()

    async def _run(self) -> None:
        while True:
            case = await self.queue.get()
            try:
                await send(self.client, self.budget, case, self.max_bytes, self.bodies)
            except Exception:  # Redis down: the case is lost, live work is not
                SHADOW_CASES.labels(model=case.model, outcome="failed").inc()
                log.warning("shadow case not sent", exc_info=True)

"""Jittered retries on the real Temporal server (the stack's dev server): an activity that fails
four times, on a worker with the platform's retry interceptor (switchyard.common.retry_jitter)
drawing from a seeded generator; the server schedules each next attempt after the jittered delay,
not the policy's plain exponential one."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from switchyard.common.retry_jitter import JITTER, JitteredRetries, policy_delay
from switchyard.devstack.stack import Stack

POLICY = RetryPolicy(initial_interval=timedelta(milliseconds=400), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=2), maximum_attempts=10)
FAILS = 4
SEED = 7
failed_at: list[float] = []  # wall-clock time of each failure
scheduled_at: list[float] = []  # the server's scheduled time of each attempt


@activity.defn(name="flaky")
async def flaky() -> int:
    info = activity.info()
    scheduled_at.append(info.current_attempt_scheduled_time.timestamp())
    if info.attempt <= FAILS:
        failed_at.append(time.time())
        raise RuntimeError(f"attempt {info.attempt} fails")
    return info.attempt


@workflow.defn(name="FlakyOnce")
class FlakyOnce:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity("flaky", start_to_close_timeout=timedelta(seconds=10), retry_policy=POLICY)


def test_the_server_waits_the_jittered_delay_before_each_retry(stack: Stack) -> None:
    async def go() -> int:
        client = await Client.connect(f"127.0.0.1:{stack.cfg.temporal_port}")
        queue = f"jitter-test-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[FlakyOnce], activities=[flaky], interceptors=[JitteredRetries(random.Random(SEED))],
                          workflow_runner=UnsandboxedWorkflowRunner()):
            return await client.execute_workflow(FlakyOnce.run, id=queue, task_queue=queue)  # type: ignore[no-any-return]

    assert asyncio.run(go()) == FAILS + 1
    # The delays the interceptor drew (same seed), and what the plain policy would have waited.
    rng = random.Random(SEED)
    plain = [policy_delay(POLICY, a).total_seconds() for a in range(1, FAILS + 1)]
    drawn = [p * rng.uniform(*JITTER) for p in plain]
    waited = [scheduled_at[i + 1] - failed_at[i] for i in range(FAILS)]
    assert max(abs(d / p - 1) for d, p in zip(drawn, plain, strict=True)) > 0.2, (drawn, plain)  # the seed draws visibly off the policy
    for w, d in zip(waited, drawn, strict=True):
        assert abs(w - d) < 0.25, {"waited": waited, "jittered": drawn, "policy": plain}

"""Jittered retries: every worker's activities retry after the domain policy's delay times a random
factor, so jobs that failed together (an engine restart, a Redis blip) do not come back together.

Temporal's retry policy is exponential but not jittered: the server waits exactly
``initial_interval × backoff_coefficient^(attempt-1)`` (capped at ``maximum_interval``). An activity
may name its own delay instead (``ApplicationError.next_retry_delay``); this worker interceptor does
that for every retryable failure that did not name one: the policy's delay for this attempt times a
factor drawn uniformly from [0.5, 1.5). The mean delay is the policy's, so the policies' total waiting
time (what retry.py sizes against an engine's restart) is unchanged on average; one delay may exceed
``maximum_interval`` by up to half. Errors the policy does not retry, errors marked non-retryable,
the last attempt and errors that already carry a delay (the breaker's, a draining worker's) pass
through untouched.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

JITTER: tuple[float, float] = (0.5, 1.5)


def policy_delay(policy: RetryPolicy, attempt: int) -> timedelta:
    """What Temporal itself waits after failed attempt ``attempt`` (1-based) under ``policy``."""
    seconds = policy.initial_interval.total_seconds() * policy.backoff_coefficient ** min(attempt - 1, 64)
    if policy.maximum_interval is not None:
        seconds = min(seconds, policy.maximum_interval.total_seconds())
    return timedelta(seconds=seconds)


def jittered_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> timedelta:
    return policy_delay(policy, attempt) * (rng or random).uniform(*JITTER)


def backoff_at_least(seconds: float) -> timedelta:
    """The running activity's next retry delay when something names a minimum (the time until an
    open breaker's probe): the policy's jittered backoff for this attempt, or ``seconds`` if longer.
    Waiting for a probe alone would spend an attempt every few seconds (every 0.5 s while another
    call probes) and exhaust the attempts the policy sizes against an engine's restart."""
    info = activity.info()
    policy = jittered_delay(info.retry_policy, info.attempt) if info.retry_policy is not None else timedelta(0)
    return max(policy, timedelta(seconds=seconds))


def with_jittered_delay(error: Exception, policy: RetryPolicy | None, attempt: int, rng: random.Random | None = None) -> Exception:
    """``error`` as the ApplicationError Temporal would record (same type, message and details) with
    a jittered ``next_retry_delay``; ``error`` itself where Temporal will not retry it or it has a delay."""
    if policy is None or (policy.maximum_attempts and attempt >= policy.maximum_attempts):
        return error
    if isinstance(error, ApplicationError):
        if error.non_retryable or error.next_retry_delay is not None:
            return error
        error_type, message, details, category = error.type, error.message, tuple(error.details), error.category
    else:
        error_type, message, details, category = type(error).__name__, str(error), (), ApplicationErrorCategory.UNSPECIFIED
    if error_type in (policy.non_retryable_error_types or ()):
        return error
    return ApplicationError(message, *details, type=error_type, next_retry_delay=jittered_delay(policy, attempt, rng), category=category)


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, rng: random.Random | None) -> None:
        super().__init__(next)
        self.rng = rng

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await self.next.execute_activity(input)
        except Exception as e:  # BaseException (cancellation, async completion) passes through
            info = activity.info()
            out = with_jittered_delay(e, info.retry_policy, info.attempt, self.rng)
            if out is e:
                raise
            # The original's traceback and cause, as Temporal would have recorded them.
            raise out.with_traceback(e.__traceback__) from e.__cause__


class JitteredRetries(Interceptor):
    """The worker interceptor (``Worker(interceptors=[JitteredRetries()])``); ``rng``: tests draw
    from a seeded one to know the delays."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self.rng)

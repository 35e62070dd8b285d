"""Per-domain retry policies. Temporal owns retries: engine clients never retry on their own."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from temporalio.common import RetryPolicy

# Errors that retrying cannot fix (bad input, unknown model...). An engine's refusal of the request
# (a 4xx, e.g. ContextLengthExceeded) is raised non-retryable where it is caught. Out of memory
# (engines.oom.OOM_ERROR_TYPE) is retryable: the domain reacts (next endpoint, smaller batch).
NON_RETRYABLE_ERROR_TYPES: Final[list[str]] = ["InvalidInput", "UnknownModel"]



def inference_policy(maximum_interval: timedelta) -> RetryPolicy:
    """Engine work: exponential from 200 ms (x2), 30 attempts, bad input never retried.

    Enough attempts to outlast an engine's restart (vLLM reloads in 60-90 s on 2 CPUs; the chaos
    suite, tests/chaos): while an engine is down its breaker fails attempts fast, and an attempt
    whose half-open probe another job took, or whose probe found the engine still loading, is one
    more spent. With 5 (~20 s of waiting) a restarted engine failed the jobs that were waiting for it."""
    return RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0, maximum_interval=maximum_interval,
                       maximum_attempts=30, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)


# ~4 minutes of attempts in all (10 s apart once the backoff is there).
LLM_RETRY_POLICY: Final[RetryPolicy] = inference_policy(timedelta(seconds=10))
# Vision batches: a retry resumes after the last finished chunk (heartbeat checkpoint).
# ~2 minutes of attempts in all (5 s apart once the backoff is there).
VISION_RETRY_POLICY: Final[RetryPolicy] = inference_policy(timedelta(seconds=5))
# Recsys batches: the feature store (Redis) being down fails attempts fast (the worker's breaker), so
# they keep retrying for ~6.5 minutes (1 s doubling to 15 s, 30 attempts) and the job resumes when it is back.
RECSYS_RETRY_POLICY: Final[RetryPolicy] = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=15),
                                                      maximum_attempts=30, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES)

# Bookkeeping activities (database, event stream) retry quickly and for longer.
BOOKKEEPING_RETRY_POLICY: Final[RetryPolicy] = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=20,
)

"""Jittered retries (switchyard.common.retry_jitter): which failures get a delay, and its bounds.
That the real Temporal server waits the delays it is given: tests/integration/test_retry_jitter.py."""

from __future__ import annotations

import dataclasses
import random
import statistics
from datetime import timedelta

from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from switchyard.common.retry import LLM_RETRY_POLICY, NON_RETRYABLE_ERROR_TYPES
from switchyard.common.retry_jitter import backoff_at_least, policy_delay, with_jittered_delay


def test_the_policy_delay_is_temporals_exponential_capped_at_the_maximum() -> None:
    assert [policy_delay(LLM_RETRY_POLICY, a).total_seconds() for a in (1, 2, 3, 6, 7, 30)] == [0.2, 0.4, 0.8, 6.4, 10.0, 10.0]


def test_jittered_delays_stay_within_half_and_one_and_a_half_of_the_policys_and_keep_its_mean() -> None:
    rng = random.Random(3)
    for attempt in (1, 4, 12):
        base = policy_delay(LLM_RETRY_POLICY, attempt).total_seconds()
        drawn = []
        for _ in range(2000):
            out = with_jittered_delay(RuntimeError("engine away"), LLM_RETRY_POLICY, attempt, rng)
            assert isinstance(out, ApplicationError) and out.next_retry_delay is not None
            drawn.append(out.next_retry_delay.total_seconds())
        assert base * 0.5 <= min(drawn) and max(drawn) < base * 1.5
        assert abs(statistics.fmean(drawn) / base - 1) < 0.03  # the policy's total waiting is unchanged on average
        assert len({round(d, 6) for d in drawn}) > 1900  # spread, not one value


def test_a_plain_exception_becomes_the_application_error_temporal_would_record() -> None:
    out = with_jittered_delay(ConnectionError("refused"), LLM_RETRY_POLICY, 2)
    assert isinstance(out, ApplicationError)
    assert (out.type, out.message, out.non_retryable) == ("ConnectionError", "refused", False)


def test_an_application_error_keeps_its_type_message_and_details() -> None:
    err = ApplicationError("out of memory", {"chunk": 8}, type="EngineOutOfMemory")
    out = with_jittered_delay(err, LLM_RETRY_POLICY, 1)
    assert out is not err and isinstance(out, ApplicationError)
    assert (out.type, out.message, list(out.details)) == ("EngineOutOfMemory", "out of memory", [{"chunk": 8}])
    assert out.next_retry_delay is not None and timedelta(milliseconds=100) <= out.next_retry_delay < timedelta(milliseconds=300)


def test_what_temporal_will_not_retry_or_already_has_a_delay_passes_through_untouched() -> None:
    untouched = [ApplicationError("bad", type=NON_RETRYABLE_ERROR_TYPES[0]),  # the policy's non-retryable types
                 ApplicationError("refused", type="ContextLengthExceeded", non_retryable=True),
                 ApplicationError("breaker open", type="EngineUnavailable", next_retry_delay=timedelta(seconds=3)),
                 ApplicationError("unknown", type="UnknownModel")]
    for err in untouched:
        assert with_jittered_delay(err, LLM_RETRY_POLICY, 1) is err
    last = LLM_RETRY_POLICY.maximum_attempts
    plain = RuntimeError("last attempt")
    assert with_jittered_delay(plain, LLM_RETRY_POLICY, last) is plain  # nothing follows it
    assert with_jittered_delay(plain, None, 1) is plain  # no policy (a local activity)


def test_waiting_for_a_breaker_probe_never_retries_sooner_than_the_policys_backoff() -> None:
    """An open breaker names the time until its probe (0.5 s while another call probes); past the
    first attempts the policy's backoff is longer, and wins: a long outage spends the attempts no
    faster than the policy would (the chaos suite saw 20 attempts spent in 10 s while vLLM's probe ran)."""
    env = ActivityEnvironment()
    for attempt, probe_in in ((1, 4.0), (2, 0.5), (12, 0.5), (12, 30.0)):
        env.info = dataclasses.replace(ActivityEnvironment.default_info(), attempt=attempt, retry_policy=LLM_RETRY_POLICY)
        delay = env.run(backoff_at_least, probe_in).total_seconds()
        base = policy_delay(LLM_RETRY_POLICY, attempt).total_seconds()
        assert delay >= probe_in and (delay == probe_in or base * 0.5 <= delay < base * 1.5), (attempt, probe_in, delay)
    env.info = dataclasses.replace(ActivityEnvironment.default_info(), attempt=12, retry_policy=LLM_RETRY_POLICY)
    assert env.run(backoff_at_least, 0.5) >= timedelta(seconds=5)  # attempt 12: 10 s x [0.5, 1.5)

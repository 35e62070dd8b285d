from __future__ import annotations

from switchyard.common.engines.base import EngineError, parse_prometheus
from switchyard.common.engines.sglang import sglang_priority
from switchyard.common.llm_generation import job_seed

PAGE = """# HELP vllm:num_requests_waiting waiting
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} NaN
llamacpp:requests_processing 2
"""


def test_parse_prometheus_picks_gauges_with_or_without_labels() -> None:
    got = parse_prometheus(PAGE, {"waiting": "vllm:num_requests_waiting", "running": "llamacpp:requests_processing", "kv": "vllm:kv_cache_usage_perc"})
    assert got == {"waiting": 3.0, "running": 2.0}


def test_sglang_runs_higher_priority_first() -> None:
    assert [sglang_priority(k) for k in (1, 3, 5)] == [5, 3, 1]


def test_engine_error_retryability() -> None:
    assert not EngineError(400, "bad").retryable and EngineError(503, "busy").retryable and EngineError(429, "slow down").retryable


def test_job_seeds_are_fixed_per_job_and_choice() -> None:
    assert job_seed("j1", None, 0) == job_seed("j1", None, 0) != job_seed("j2", None, 0)
    assert job_seed("j1", 7, 1) == 8 and 0 <= job_seed("j1", None, 3) < 2**31

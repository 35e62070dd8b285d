from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from switchyard.common.contracts import JobCreate, JobStatus, LlmInput
from switchyard.common.priority import priority_key

JOB = TypeAdapter(JobCreate)


@pytest.mark.parametrize(("value", "key"), [(None, 3), (1, 1), (5, 5), ("high", 1), ("normal", 3), ("low", 5)])
def test_priority_maps_to_temporal_priority_key(value: int | str | None, key: int) -> None:
    assert priority_key(value) == key  # type: ignore[arg-type]


def test_domain_selects_the_input_model() -> None:
    job = JOB.validate_python({"domain": "recsys", "model": "m", "input": {"users": [3, 7]}})
    assert job.domain == "recsys" and job.input.k == 10 and job.input.exclude_seen
    with pytest.raises(ValidationError):
        JOB.validate_python({"domain": "recsys", "model": "m", "input": {"prompt": "hi"}})


@pytest.mark.parametrize(
    "inp",
    [{}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, {"prompt": ""}, {"prompt": "a", "max_tokens": 0}, {"prompt": "a", "top_p": 0}],
)
def test_llm_input_rejects(inp: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LlmInput.model_validate(inp)


def test_terminal_statuses() -> None:
    assert {s for s in JobStatus if s.terminal} == {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}

"""Text the job store cannot keep (NUL, unpaired surrogates) is refused when a request is validated."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from switchyard.api.errors import _loc
from switchyard.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from switchyard.common.contracts import JobCreate

JOB = TypeAdapter(JobCreate)
BAD = ["a\x00b", "a\ud800b"]
KEY = "<the key>"  # in an expected loc: the bad key itself (pydantic reports a surrogate as U+FFFD)


def _job(**fields: object) -> dict[str, object]:
    return {"domain": "llm", "model": "m", "input": {"prompt": "hi"}, **fields}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (lambda t: _job(input={"prompt": t}), ("llm", "input", "prompt")),
        (lambda t: _job(input={"messages": [{"role": "user", "content": t}]}), ("llm", "input", "messages", 0, "content")),
        (lambda t: _job(input={"prompt": "hi", "stop": [t]}), ("llm", "input", "stop", 0)),
        (lambda t: _job(metadata={"k": t}), ("llm", "metadata", "k")),
        (lambda t: _job(metadata={t: "v"}), ("llm", "metadata", KEY, "[key]")),
        (lambda t: {"domain": "recsys", "model": "m", "input": {"users": [1]}, "metadata": {"k": t}}, ("recsys", "metadata", "k")),
    ],
)
def test_job_text_fields_refuse_unstorable_text(bad: str, body, loc: tuple[object, ...]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as e:
        JOB.validate_python(body(bad))
    actual = e.value.errors()[0]["loc"]
    assert len(actual) == len(loc) and all(want in (got, KEY) for got, want in zip(actual, loc, strict=True)), actual


def test_ordinary_text_is_kept() -> None:
    text = "naïve café 日本語 🚂 \t\n\x01"  # anything else, control characters included, is fine
    job = JOB.validate_python(_job(input={"prompt": text, "stop": [text[:8]]}, metadata={text: text}))
    assert job.input.prompt == text and job.metadata == {text: text}  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ChatCompletionRequest, lambda t: {"messages": [{"role": "user", "content": t}]}),
        (ChatCompletionRequest, lambda t: {"messages": [{"role": "user", "content": [{"type": "text", "text": t}]}]}),
        (ChatCompletionRequest, lambda t: {"messages": [{"role": "user", "content": "hi"}], "stop": t}),
        (ChatCompletionRequest, lambda t: {"messages": [{"role": "user", "content": "hi"}], "user": t}),
        (CompletionRequest, lambda t: {"prompt": t}),
        (CompletionRequest, lambda t: {"prompt": [t]}),
        (EmbeddingRequest, lambda t: {"input": t}),
    ],
)
def test_openai_text_fields_refuse_unstorable_text(bad: str, model: type[BaseModel], body) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        model.model_validate({"model": "m", **body(bad)})


def test_a_bad_dict_key_is_named_by_its_dict() -> None:
    assert _loc(("body", "llm", "metadata", "a\x00b", "[key]")) == "metadata"
    assert _loc(("body", "llm", "metadata", "team")) == "metadata.team"
    assert _loc(("body", "llm", "input", "prompt", "function-after[_storable(), constrained-str]")) == "input.prompt"


"""OpenAI request models (chat, completions, embeddings), validated strictly.

Unknown fields are refused (400), as OpenAI does. Fields OpenAI has but Switchyard does not
implement are refused with a message that says so, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchyard.common.contracts import ChatMessage, LlmInput, StorableStr

# Text fields are StorableStr: text the job store cannot keep is a 400 here, not a 500 at insert time.
Stop = Annotated[StorableStr, Field(min_length=1, max_length=64)] | Annotated[list[Annotated[StorableStr, Field(min_length=1, max_length=64)]], Field(max_length=4)] | None


def _stops(stop: Stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=128)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    stop: Stop = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    user: Annotated[StorableStr, Field(max_length=256)] | None = None
    # Switchyard extension: generate exactly max_tokens (ignore end-of-sequence).
    ignore_eos: bool = False
    # Accepted at their neutral value only: sampling penalties are not implemented.
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StorableStr


class ChatCompletionMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[StorableStr, Field(max_length=200_000)] | Annotated[list[TextPart], Field(min_length=1)]
    name: Annotated[StorableStr, Field(max_length=64)] | None = None

    def plain(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatCompletionMessage], Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def llm_input(self, default_max_tokens: int) -> LlmInput:
        return LlmInput(
            messages=[m.plain() for m in self.messages], max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed, stop=_stops(self.stop), n=self.n, logprobs=self.logprobs,
            top_logprobs=self.top_logprobs, ignore_eos=self.ignore_eos,
        )


class CompletionRequest(_Common):
    prompt: Annotated[StorableStr, Field(min_length=1, max_length=200_000)] | Annotated[list[Annotated[StorableStr, Field(min_length=1, max_length=200_000)]], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Literal[False] = False
    suffix: None = None
    best_of: Literal[1] | None = None

    def llm_input(self) -> LlmInput:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return LlmInput(
            prompt=prompt, max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stop=_stops(self.stop), n=self.n, logprobs=self.logprobs is not None, top_logprobs=self.logprobs, ignore_eos=self.ignore_eos,
        )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=128)]
    input: Annotated[StorableStr, Field(min_length=1, max_length=100_000)] | Annotated[list[Annotated[StorableStr, Field(min_length=1, max_length=100_000)]], Field(min_length=1, max_length=256)]
    encoding_format: Literal["float", "base64"] = "float"
    user: Annotated[StorableStr, Field(max_length=256)] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_arrays(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not isinstance(v[0], str):
            raise ValueError("token-array input is not supported; send text")
        return v

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# Parameters OpenAI defines that Switchyard refuses explicitly (so clients learn it, not guess).
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling", "function_call": "function calling",
    "parallel_tool_calls": "tool calling", "response_format": "structured output", "logit_bias": "logit bias", "audio": "audio output",
    "modalities": "audio output", "prediction": "predicted outputs", "web_search_options": "web search", "dimensions": "embedding dimensions",
}

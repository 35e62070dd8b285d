"""What the OpenAI-compatible routes answer: models, completions (whole and streamed), embeddings.

Field order is the order on the wire. Fields OpenAI sends as ``null`` are kept as ``null``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from switchyard.common.contracts import Usage

# Per choice: chat's ``{"content": [...]}`` or the completions API's token/offset lists, or null.
ChoiceLogprobs = dict[str, Any] | None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    finish_reason: str
    logprobs: ChoiceLogprobs
    message: ChatMessage


class TextChoice(BaseModel):
    index: int
    finish_reason: str | None
    logprobs: ChoiceLogprobs
    text: str


class _Envelope(BaseModel):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: None = None


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage | None


class Completion(_Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None


class ChatDelta(BaseModel):
    """Only what this chunk adds: the role once, then content; nothing on the finishing chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    finish_reason: str | None
    logprobs: ChoiceLogprobs
    delta: ChatDelta


class ChatRoleChoice(BaseModel):
    """The first chunk of a chat stream: the role of every choice (OpenAI's field order)."""

    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice | ChatRoleChoice]
    # Present (null until the last chunk) only when the client asked for stream_options.include_usage.
    usage: Usage | None = None


class CompletionChunk(_Envelope):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or with encoding_format=base64 their little-endian float32 bytes.
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

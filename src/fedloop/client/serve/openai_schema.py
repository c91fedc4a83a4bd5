"""The OpenAI chat-completions schema as fedloop serves it: typed requests and responses.

Requests accept what products send (content as text parts, the `developer`
role, `stop`, `stream_options.include_usage`, sampling fields, `seed`,
`max_completion_tokens`, `metadata`) and refuse by name anything fedloop does
not do (`extra="forbid"`, `n` other than 1, tools). Responses are built from
these classes, never by hand.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedloop.client.store.api import ChatMessage
from fedloop.shared.echo import echoed

METADATA_KEYS = ("user", "session_id", "prompt_version", "draft_id")


class Strict(BaseModel):
    """A request part: unknown fields are refused by name."""

    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class ChatMessageIn(Strict):
    """One message of the conversation; `developer` is OpenAI's newer name for `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_chat(self) -> ChatMessage:
        """The message as fedloop records and renders it: role (developer as system) and its text."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(Strict):
    """Options of a streamed response."""

    include_usage: bool = False


class ChatCompletionRequest(Strict):
    """The chat completion request that drafting serves."""

    model: str
    messages: list[ChatMessageIn]
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = 1
    stop: str | list[str] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("fedloop drafts one reply per request: send n = 1 or leave it out")
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (len(value) > 4 or not all(value)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    @field_validator("metadata")
    @classmethod
    def _known_keys(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(METADATA_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {echoed(unknown)}: fedloop reads {', '.join(METADATA_KEYS)}")
        return value

    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class OutcomeRequest(Strict):
    """What the user did with a draft."""

    action: Literal["accept", "edit", "reject"]
    final_text: str | None = None
    dwell_ms: int = Field(default=0, ge=0)  # its upper bound is the tenant's ingest.max_dwell_ms (check_dwell)


class Usage(BaseModel):
    """Token counts of a reply."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The drafted reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one choice of a completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class DraftInfo(BaseModel):
    """fedloop's own fields: the id to report the outcome with, the version that drafted, whether it is the canary."""

    draft_id: str
    version: str
    canary: bool


class ChatCompletion(BaseModel):
    """A non-streamed completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    fedloop: DraftInfo


class Delta(BaseModel):
    """A piece of a streamed reply."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The one choice of a streamed chunk."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    fedloop: DraftInfo | None = None


class ModelCard(BaseModel):
    """A model the endpoint serves: the routing alias or an installed version."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fedloop"


class ModelList(BaseModel):
    """What `GET /v1/models` lists."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """OpenAI's error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the endpoint answers."""

    error: ErrorDetail


ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None, code: str) -> ErrorResponse:
    """OpenAI's error body for a status."""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    """Usage with its total."""
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def sse(payload: BaseModel | str) -> str:
    """One server-sent event."""
    return f"data: {payload.model_dump_json() if isinstance(payload, BaseModel) else payload}\n\n"

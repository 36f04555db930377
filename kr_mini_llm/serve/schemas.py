"""The OpenAI request and response bodies the server speaks (the subset it honours).

Requests validate their ranges here, so a bad value is a 400 that names the field. Fields a
client may send but this server cannot honour (n > 1, logprobs, echo, suffix, best_of > 1) are
rejected rather than silently ignored; other unknown fields are ignored, as OpenAI's own
clients send extras. As in OpenAI's API, `null` for an optional field means its default, and
text must be valid Unicode (a lone UTF-16 surrogate is a 400, not a codec error later).
"""
from __future__ import annotations

import time
from typing import Annotated, List, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator,
                      model_validator)

from ..data.chat import ROLES

MAX_MESSAGES = 2048  # OpenAI's own limit; it also bounds the work before the context check
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for system instructions


def _valid_unicode(v: str) -> str:
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"the text holds a lone UTF-16 surrogate ({v[e.start]!a} at character {e.start}); "
                             "send valid Unicode") from None
    return v


Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Body(BaseModel):
    """A request object: unknown fields are ignored, `null` for a field with a default means that default."""
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _null_is_default(cls, v, info: ValidationInfo):
        if v is None:
            field = cls.model_fields[info.field_name]
            if not field.is_required():
                return field.get_default(call_default_factory=True)
        return v


class GenerationRequest(_Body):
    """What both completion routes share: the model, the answer's length and the sampling settings."""
    model: Text
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0, description="extension: keep the k most likely tokens (0 = all)")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="extension: CTRL-style, 1 = off")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: Optional[Union[Text, List[Text]]] = None
    stream: bool = False
    stream_options: Optional["StreamOptions"] = None
    n: int = 1
    logprobs: Optional[Union[bool, int]] = None
    user: Optional[Text] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator("n")
    @classmethod
    def _n(cls, v):
        if v != 1:
            raise ValueError(f"only n=1 is supported, got {v}")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v not in (None, False, 0):
            raise ValueError("logprobs are not supported by this server")
        return v


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    role: str
    content: Optional[Union[Text, List[TextPart]]] = None  # null: only an assistant's (e.g. beside tool_calls)
    name: Optional[Text] = None

    @field_validator("role")
    @classmethod
    def _role(cls, v):
        if v not in ROLES and v not in ROLE_ALIASES:
            raise ValueError(f"role must be one of {', '.join((*ROLES, *ROLE_ALIASES))}; got {v!r}")
        return ROLE_ALIASES.get(v, v)

    @model_validator(mode="after")
    def _content(self):
        if self.content is None:
            if self.role != "assistant":
                raise ValueError(f"a {self.role} message needs a 'content' (only an assistant's may be null)")
            self.content = ""
        return self

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(GenerationRequest):
    messages: List[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    truncation: Literal["auto", "disabled"] = Field(
        "disabled", description="extension, as OpenAI's Responses API: 'auto' drops the oldest turns (after the "
        "system messages) and caps max_tokens so the conversation fits the context; the response headers "
        "X-Dropped-Messages and X-Max-Tokens say what was done")

    @model_validator(mode="after")
    def _max(self):
        if self.max_tokens is None:  # the newer name; max_tokens wins when both are given
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(GenerationRequest):
    prompt: Union[Text, List[Text], List[StrictInt], List[List[StrictInt]]] = Field(
        description="text, or token ids (used as they are: no bos is added); one prompt per request")
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: Optional[Text] = None
    best_of: Optional[int] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list):
            if len(v) == 0:
                raise ValueError("the prompt is an empty list; send a string or a list of token ids")
            if not isinstance(v[0], int):  # a batch of prompts (strings or token-id lists)
                if len(v) != 1:
                    raise ValueError(f"one prompt per request is supported, got a list of {len(v)}")
                v = v[0]
            if isinstance(v, list) and not v:
                raise ValueError("the prompt's token-id list is empty")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        if self.echo:
            raise ValueError("echo is not supported by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported by this server")
        return self


# -- responses -------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: Optional[str] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Optional[str]
    logprobs: None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: List[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Optional[str] = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: List[ChatChunkChoice]
    usage: Optional[Usage] = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Optional[str] = None
    logprobs: None = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: List[CompletionChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kr-mini-llm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


GenerationRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()

"""The OpenAI request and response bodies the server accepts and returns (pydantic).

Unknown request fields are ignored, as OpenAI clients expect. Ranges that pydantic can check are
declared here (they also document the API in /openapi.json); the rest is checked when settings are
built.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

MAX_STOP_STRINGS = 16


def _check_stop(value: object) -> object:
    """One message that says what is wrong with `stop` (a union's per-branch errors say little)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PydanticCustomError("stop", "must be a string or a list of strings")
    if len(value) > MAX_STOP_STRINGS:
        raise PydanticCustomError("stop", "at most {most} stop strings, got {count}",
                                  {"most": MAX_STOP_STRINGS, "count": len(value)})
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Request):
    include_usage: bool = False


class Speculation(_Request):
    """localspec's extension: how to draft (`"speculation": false` means plain decoding)."""

    drafter: str | None = Field(None, description="auto, recycling, retrieval, lookup or none; with the "
                                                  "torch backend also layerskip and polybasic")
    max_draft_tokens: int | None = Field(None, ge=0, le=255)


class SamplingRequest(_Request):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="llama.cpp extension; 0 = off")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="llama.cpp extension")
    repeat_penalty: float | None = Field(None, ge=0.01, le=100.0, description="llama.cpp extension")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, description="negative = random")
    stop: Annotated[str | list[str] | None, BeforeValidator(_check_stop)] = None
    n: int = Field(1, ge=1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = Field(None, description="token id -> bias in [-100, 100]")
    speculation: StrictBool | Speculation | None = None  # "yes" is not a switch
    user: str | None = None


class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ResponseFormat(_Request):
    type: str = "text"


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


# -- responses ------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class Timings(BaseModel):
    """As llama-server reports them; prompt_n counts the tokens prefilled (cache_n were reused)."""

    cache_n: int
    prompt_n: int
    prompt_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float
    draft_n: int
    draft_n_accepted: int
    steps: int
    drafter: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: Timings


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    timings: Timings


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "localspec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail

"""OpenAI request bodies -> prompt tokens and frozen generation settings for the session."""

from __future__ import annotations

from dataclasses import dataclass, field

from localspec.backends.base import Backend
from localspec.chat import Message, encode_chat
from localspec.server.config import ServerConfig
from localspec.server.errors import APIError
from localspec.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    Speculation,
)
from localspec.settings import GenerationSettings, SamplingSettings

MAX_LOGIT_BIAS_ENTRIES = 1024
MIN_TEMPERATURE = 1e-6
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty")


@dataclass(frozen=True)
class Prepared:
    """A request ready for the session."""

    prompt: list[int]
    settings: GenerationSettings
    logit_bias: dict[int, float] = field(default_factory=dict)
    echo: str = ""  # text to put before the completion (/v1/completions with echo)


def _drafting(spec: bool | Speculation | None, config: ServerConfig) -> tuple[str, int]:
    drafter, budget = config.drafter, config.max_draft_tokens
    if spec is False:
        return "none", 0
    if isinstance(spec, Speculation):
        drafter = spec.drafter or drafter
        budget = budget if spec.max_draft_tokens is None else spec.max_draft_tokens
    if drafter not in config.drafters:
        raise APIError(400, f"unknown drafter {drafter!r}; choose one of: {', '.join(config.drafters)}",
                       param="speculation.drafter")
    return drafter, budget


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    if not raw:
        return {}
    if len(raw) > MAX_LOGIT_BIAS_ENTRIES:
        raise APIError(400, f"logit_bias has more than {MAX_LOGIT_BIAS_ENTRIES} entries", param="logit_bias")
    out = {}
    for key, value in raw.items():
        try:
            out[int(key)] = value
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}",
                           param="logit_bias") from None
    return out


def generation_settings(req: SamplingRequest, config: ServerConfig, max_tokens: int | None,
                        default_max_tokens: int) -> GenerationSettings:
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    drafter, budget = _drafting(req.speculation, config)
    given = {name: getattr(req, name) for name in SAMPLING_FIELDS if getattr(req, name) is not None}
    given.setdefault("temperature", 1.0)  # OpenAI's default; send 0 for greedy
    if given["temperature"] < MIN_TEMPERATURE:  # logits / 1e-320 overflow to inf; this close to 0 is argmax
        given["temperature"] = 0.0
    seed = req.seed if req.seed is not None and req.seed >= 0 else None
    sampling = SamplingSettings(seed=seed, **given)
    return GenerationSettings(max_tokens=max_tokens or default_max_tokens, stop=tuple(s for s in stops if s),
                              drafter=drafter, max_draft_tokens=budget, sampling=sampling)


def _tokenize(backend: Backend, text: str, param: str) -> list[int]:
    try:
        return backend.tokenize(text, add_special=True)
    except UnicodeError:
        raise APIError(400, "the text is not valid Unicode", param=param) from None


def _check_length(prompt: list[int], backend: Backend, config: ServerConfig, param: str) -> None:
    if not prompt:
        raise APIError(400, "the prompt is empty", param=param)
    if config.max_prompt_tokens is not None and len(prompt) > config.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(prompt)} tokens; this server accepts at most "
                       f"{config.max_prompt_tokens}", param=param, code="context_length_exceeded")
    if len(prompt) >= backend.n_ctx:
        raise APIError(400, f"this model's context holds {backend.n_ctx} tokens, but the prompt has "
                       f"{len(prompt)}; shorten the prompt (or restart the server with a larger --ctx)",
                       param=param, code="context_length_exceeded")


def _message_text(message, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"content parts of type {part.type!r} are not supported (text only)",
                           param=f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


def prepare_chat(req: ChatCompletionRequest, backend: Backend, config: ServerConfig) -> Prepared:
    """Apply the model's chat template and build the settings (tokenizes: call off the event loop)."""
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if req.response_format is not None and req.response_format.type != "text":
        raise APIError(400, f"response_format {req.response_format.type!r} is not supported",
                       param="response_format")
    settings = generation_settings(req, config, req.max_completion_tokens or req.max_tokens, backend.n_ctx)
    messages = [Message("system" if m.role == "developer" else m.role, _message_text(m, i))
                for i, m in enumerate(req.messages)]
    try:
        prompt = encode_chat(backend, messages)
    except UnicodeError:
        raise APIError(400, "the messages are not valid Unicode", param="messages") from None
    _check_length(prompt, backend, config, "messages")
    return Prepared(prompt, settings, _logit_bias(req.logit_bias))


def _prompt_tokens(req: CompletionRequest, backend: Backend) -> tuple[list[int], str]:
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError(400, "only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return _tokenize(backend, prompt, "prompt"), prompt
    if any(not 0 <= t < backend.n_vocab for t in prompt):
        raise APIError(400, f"prompt token ids must be in 0..{backend.n_vocab - 1}", param="prompt")
    text = b"".join(backend.token_bytes(t) for t in prompt).decode("utf-8", "replace")
    return list(prompt), text


def prepare_completion(req: CompletionRequest, backend: Backend, config: ServerConfig) -> Prepared:
    """Tokenize the prompt and build the settings (call off the event loop)."""
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    if req.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if req.best_of not in (None, 1):
        raise APIError(400, "only best_of=1 is supported", param="best_of")
    settings = generation_settings(req, config, req.max_tokens, config.completion_max_tokens)
    prompt, text = _prompt_tokens(req, backend)
    _check_length(prompt, backend, config, "prompt")
    return Prepared(prompt, settings, _logit_bias(req.logit_bias), echo=text if req.echo else "")

"""Chat prompts: render a conversation with the model's Jinja chat template (ChatML if none)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localspec.errors import InvalidSettingsError, UnsupportedModelError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidSettingsError(f"unknown chat role {self.role!r}; use one of {', '.join(ROLES)}")


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def render_chat(messages: Sequence[Message], template: str | None = None, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation, as Hugging Face and llama.cpp render Jinja templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template or CHATML)
        return compiled.render(messages=[{"role": m.role, "content": m.content} for m in messages],
                               bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as exc:
        raise UnsupportedModelError(f"the model's chat template failed: {exc}") from None


def encode_chat(backend, messages: Sequence[Message]) -> list[int]:
    """Render with the backend's template and tokenize, parsing the template's control tokens.

    A BOS token is added only if the rendered text does not already start with it.
    """
    bos = backend.special_token_text(backend.bos_token)
    eos = backend.special_token_text(backend.eos_token)
    text = render_chat(messages, backend.chat_template, bos, eos)
    add_bos = not (bos and text.startswith(bos))
    return backend.tokenize(text, add_special=add_bos, parse_special=True)

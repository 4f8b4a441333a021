"""Server settings, built at the edge (the `serve` command or a test) and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from localspec.drafters import DRAFTERS
from localspec.errors import InvalidSettingsError


@dataclass(frozen=True)
class ServerConfig:
    model_id: str  # what /v1/models lists and responses report
    api_key: str | None = None  # None: no authentication
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    max_body_bytes: int = 4 * 1024 * 1024
    max_prompt_tokens: int | None = None  # None: whatever fits the context
    max_queue: int = 64  # requests waiting or running; more get 503
    drafter: str = "auto"  # used when a request does not choose
    drafters: tuple[str, ...] = tuple(DRAFTERS)  # what requests may choose (the torch backend adds two)
    max_draft_tokens: int = 8
    completion_max_tokens: int = 16  # OpenAI's default for /v1/completions; chat runs to the context end

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise InvalidSettingsError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise InvalidSettingsError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.max_queue < 1:
            raise InvalidSettingsError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.api_key is not None and not self.api_key:
            raise InvalidSettingsError("the API key must not be empty")
        if self.drafter not in self.drafters:
            raise InvalidSettingsError(f"unknown drafter {self.drafter!r}; choose one of: "
                                       f"{', '.join(self.drafters)}")

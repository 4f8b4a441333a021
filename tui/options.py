"""A conversation's own settings: the system prompt and how answers are sampled and drafted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from localspec.drafters import DRAFTERS
from localspec.errors import InvalidSettingsError
from localspec.settings import GenerationSettings, SamplingSettings


@dataclass(frozen=True)
class ChatSettings:
    system_prompt: str = ""
    max_tokens: int = 512
    drafter: str = "auto"
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.drafter not in DRAFTERS:
            raise InvalidSettingsError(f"unknown drafter {self.drafter!r}; "
                                       f"choose one of: {', '.join(DRAFTERS)}")
        self.generation()  # the engine's own checks, so a bad value is refused when it is entered

    def generation(self) -> GenerationSettings:
        sampling = SamplingSettings(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                    min_p=self.min_p, repeat_penalty=self.repeat_penalty, seed=self.seed)
        return GenerationSettings(max_tokens=self.max_tokens, drafter=self.drafter, sampling=sampling)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> ChatSettings:
        """Unknown keys (from a newer version) are ignored; invalid values fall back to defaults."""
        if not isinstance(data, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (InvalidSettingsError, TypeError, ValueError):
            return cls()

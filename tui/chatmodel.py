"""A loaded model for the chat app: answers a conversation as a stream of progress records.

Plain Python, no Textual: the app runs `reply` in a worker thread. One lock serialises every use
of the backend, so closing the model waits for the step in flight instead of freeing it under it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localspec.backends.base import Backend
from localspec.chat import Message, encode_chat
from localspec.drafters.persist import restore_learned, save_learned
from localspec.engine import Engine, common_prefix_length
from localspec.generate import SpecStats, stream_generate
from localspec.settings import BackendSettings, GenerationSettings


@dataclass(frozen=True)
class LiveStats:
    """A snapshot of one answer's counters, safe to hand to the UI thread and to store."""

    tokens: int = 0
    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    tokens_per_s: float = 0.0
    mean_accepted: float = 0.0
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV was already cached
    by_source: dict[str, int] = field(default_factory=dict)
    step_tokens: tuple[int, ...] = ()  # tokens produced by each step: the sparkline

    @classmethod
    def of(cls, stats: SpecStats, reused: int, step_tokens: tuple[int, ...]) -> LiveStats:
        return cls(stats.tokens, stats.steps, stats.draft_tokens, stats.accepted_tokens,
                   stats.tokens_per_s, stats.mean_accepted, stats.prompt_tokens, reused,
                   dict(stats.by_source), step_tokens)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "steps": self.steps, "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens, "tokens_per_s": round(self.tokens_per_s, 2),
                "mean_accepted": round(self.mean_accepted, 3), "prompt_tokens": self.prompt_tokens,
                "reused_tokens": self.reused_tokens, "by_source": self.by_source,
                "step_tokens": list(self.step_tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> LiveStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["step_tokens"] = tuple(known.get("step_tokens", ()))
        return cls(**known)


@dataclass(frozen=True)
class Progress:
    """What one step added to the answer, with the running stats and the context in use."""

    text: str
    stats: LiveStats
    context_used: int
    finish_reason: str | None = None
    dropped_messages: int = 0  # oldest messages left out so the conversation fits the context


class ChatModel:
    def __init__(self, path: Path, backend: Backend, engine: Engine,
                 memory_budget: int | None = None, learn: bool = False) -> None:
        self.path = Path(path)
        self.backend = backend
        self.engine = engine
        self.memory_budget = memory_budget  # bytes, when a memory plan chose the settings
        self.learn = learn  # keep Token Recycling's matrix on disk between runs (`--learn`)
        self._restored: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    @property
    def context_used(self) -> int:
        return len(self.backend.tokens)

    def reply(self, messages: Sequence[Message], settings: GenerationSettings) -> Iterator[Progress]:
        """Stream the assistant's answer. Stop iterating (and close) to cancel; the KV cache stays
        valid, so the next turn re-prefills only what changed."""
        with self._lock:
            if self.learn and settings.drafter not in self._restored:
                restore_learned(self.engine.drafter(settings.drafter), self.path, self.backend.n_vocab)
                self._restored.add(settings.drafter)
            messages, prompt, dropped = self.fit(messages, settings.max_tokens)
            self.engine.check_prompt(prompt)
            reused = common_prefix_length(self.backend.tokens, prompt[:-1])
            steps: list[int] = []
            seen_tokens = seen_steps = 0
            for chunk in stream_generate(self.engine, prompt, settings):
                if chunk.stats.steps > seen_steps:
                    steps.append(chunk.stats.tokens - seen_tokens)
                seen_tokens, seen_steps = chunk.stats.tokens, chunk.stats.steps
                yield Progress(chunk.text, LiveStats.of(chunk.stats, reused, tuple(steps)),
                               len(self.backend.tokens), chunk.finish_reason, dropped)

    def fit(self, messages: Sequence[Message], max_tokens: int) -> tuple[list[Message], list[int], int]:
        """Shift the context: leave out the oldest messages (never the system prompt or the newest
        message) until the prompt leaves room for an answer of max_tokens, or a quarter of the
        context if that is less. Returns the messages kept, their prompt and how many were left out."""
        room = min(max_tokens, self.backend.n_ctx // 4)
        kept = list(messages)
        first = 1 if kept and kept[0].role == "system" else 0
        prompt = encode_chat(self.backend, kept)
        dropped = 0
        while len(prompt) + room > self.backend.n_ctx and len(kept) - first > 1:
            del kept[first]
            dropped += 1
            if len(kept) - first > 1 and kept[first].role == "assistant":
                del kept[first]  # a conversation resumes with a user message
                dropped += 1
            prompt = encode_chat(self.backend, kept)
        return kept, prompt, dropped

    def close(self) -> None:
        with self._lock:
            for name in self._restored:
                save_learned(self.engine.drafter(name), self.path)
            self._restored.clear()
            self.backend.close()


ModelLoader = Callable[[Path], ChatModel]


def load_llamacpp(path: Path, settings: BackendSettings | None = None) -> ChatModel:
    """The plain loader (no cost-curve budget); `localspec chat` passes one with the budget."""
    from localspec.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path, settings)
    return ChatModel(path, backend, Engine(backend))

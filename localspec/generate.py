"""Generation as a stream of response records, shared by `generate`, the chat app and the server.

`stream_generate` turns engine steps into text chunks (UTF-8 safe, stop strings removed) and
decides why generation ended; `generate` collects the stream into one result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from localspec.engine import Engine
from localspec.settings import GenerationSettings
from localspec.textstream import TextStream


@dataclass
class SpecStats:
    """Counters for one request; mean_accepted counts the bonus token (plain decoding = 1.0)."""

    drafter: str
    tokens: int = 0
    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    seconds: float = 0.0  # decoding only, after the prefill
    by_source: dict[str, int] = field(default_factory=dict)  # accepted draft tokens per drafter

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "seconds": round(self.seconds, 4),
                "tokens_per_s": round(self.tokens_per_s, 2), "steps": self.steps,
                "mean_accepted": round(self.mean_accepted, 3), "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens, "drafter": self.drafter,
                "prompt_tokens": self.prompt_tokens, "prefill_seconds": round(self.prefill_seconds, 4)}


@dataclass(frozen=True)
class Chunk:
    """What one step added. The last chunk of a stream has a finish_reason."""

    text: str
    tokens: list[int]
    stats: SpecStats
    finish_reason: str | None = None  # "stop" (end token or stop string), "length", "context"


@dataclass(frozen=True)
class Result:
    text: str
    tokens: list[int]
    finish_reason: str
    stats: SpecStats


def stream_generate(engine: Engine, prompt: Sequence[int], settings: GenerationSettings
                    ) -> Iterator[Chunk]:
    backend = engine.backend
    stats = SpecStats(drafter=settings.drafter, prompt_tokens=len(prompt))
    text = TextStream(settings.stop)
    start = time.perf_counter()
    engine.prefill(prompt)
    stats.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()  # decode speed excludes the prefill
    finish = "context"
    for step in engine.steps(prompt, settings):
        tokens = step.tokens[: settings.max_tokens - stats.tokens]
        end = next((i for i, t in enumerate(tokens) if backend.is_eog(t)), None)
        if end is not None:
            tokens = tokens[:end]
        piece = text.feed(b"".join(backend.token_bytes(t) for t in tokens))
        stats.tokens += len(tokens)
        stats.steps += 1
        stats.draft_tokens += step.drafted
        stats.accepted_tokens += step.accepted
        if step.accepted:
            stats.by_source[step.source] = stats.by_source.get(step.source, 0) + step.accepted
        stats.seconds = time.perf_counter() - start
        if end is not None or text.stopped:
            finish = "stop"
        elif stats.tokens >= settings.max_tokens:
            finish = "length"
        else:
            if piece or tokens:
                yield Chunk(piece, tokens, stats)
            continue
        yield Chunk(piece + text.flush(), tokens, stats, finish)
        return
    stats.seconds = time.perf_counter() - start
    yield Chunk(text.flush(), [], stats, finish)


def generate(engine: Engine, prompt: Sequence[int], settings: GenerationSettings) -> Result:
    parts: list[str] = []
    tokens: list[int] = []
    chunk = None
    for chunk in stream_generate(engine, prompt, settings):
        parts.append(chunk.text)
        tokens.extend(chunk.tokens)
    assert chunk is not None and chunk.finish_reason is not None
    return Result("".join(parts), tokens, chunk.finish_reason, chunk.stats)

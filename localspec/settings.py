"""Frozen settings, built at the edge (CLI, server, profile) and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from localspec.errors import InvalidSettingsError

KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
MIN_CTX = 256  # the smallest context worth asking for: llama.cpp rounds up to a multiple of 256


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidSettingsError(message)


def default_threads() -> int:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to tell
        physical = None
    return max(1, physical or os.cpu_count() or 1)


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen. temperature == 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off
    repeat_penalty: float = 1.0  # 1.0 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64  # window the penalties look at; 0 = off, -1 = whole context
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.temperature <= 100.0, f"temperature must be in [0, 100], got {self.temperature}")
        _check(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        _check(self.repeat_penalty > 0.0, f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        _check(-2.0 <= self.presence_penalty <= 2.0,
               f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        _check(-2.0 <= self.frequency_penalty <= 2.0,
               f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        _check(self.penalty_last_n >= -1, f"penalty_last_n must be >= -1, got {self.penalty_last_n}")
        _check(self.seed is None or self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.penalty_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )


@dataclass(frozen=True)
class BackendSettings:
    """How the llama.cpp context is created."""

    n_ctx: int = 4096  # 0 = the model's training context
    n_batch: int = 512
    n_threads: int = field(default_factory=default_threads)
    n_gpu_layers: int = 0  # -1 = all
    flash_attn: bool | None = None  # None = off on a CPU alone, llama.cpp decides with GPU layers
    kv_type: str = "f16"
    max_tree_paths: int = 64  # sequences reserved for root-to-leaf paths of a draft tree

    def __post_init__(self) -> None:
        _check(self.n_ctx == 0 or self.n_ctx >= 8,  # the batch is cut to the context: keep n_batch's 8
               f"n_ctx must be 0 (the model's own) or >= 8, got {self.n_ctx}")
        _check(self.n_batch >= 8, f"n_batch must be >= 8, got {self.n_batch}")
        _check(self.n_threads >= 1, f"n_threads must be >= 1, got {self.n_threads}")
        _check(self.n_gpu_layers >= -1, f"n_gpu_layers must be >= -1, got {self.n_gpu_layers}")
        _check(self.kv_type in KV_CACHE_TYPES,
               f"kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {self.kv_type!r}")
        _check(1 <= self.max_tree_paths <= 255,  # llama.cpp has 256 sequences; one pads
               f"max_tree_paths must be in [1, 255], got {self.max_tree_paths}")

    @property
    def resolved_flash_attn(self) -> bool | None:
        """Flash attention as asked of llama.cpp (None: it decides). On a CPU alone it is off
        unless the KV cache is quantised:
        llama.cpp's CPU flash attention costs more the longer the context, and most for the
        several rows of a verify batch (measured on the widened demo model at 1024 tokens of
        context: 8 rows 33.8 ms with it, 21.1 ms without; one row 11.7 and 9.8 ms)."""
        if self.flash_attn is not None:
            return self.flash_attn
        quantised_cache = self.kv_type not in ("f32", "f16", "bf16")  # needs flash attention
        return None if self.n_gpu_layers != 0 or quantised_cache else False

    @property
    def speed_key(self) -> str:
        """Where and how decodes run, as far as their speed goes: keys the cached cost curves."""
        where = f"gpu{self.n_gpu_layers}" if self.n_gpu_layers else "cpu"
        return where + {None: "", True: "|fa", False: "|nofa"}[self.resolved_flash_attn]


@dataclass(frozen=True)
class GenerationSettings:
    """One request: how much to generate, when to stop, and how to speculate."""

    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    drafter: str = "lookup"
    max_draft_tokens: int = 8  # tree nodes verified per step, besides the pending token
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        _check(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")
        _check(0 <= self.max_draft_tokens <= 255,
               f"max_draft_tokens must be in [0, 255], got {self.max_draft_tokens}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty")

"""Turn one row of logits into the distribution the next token is drawn from.

Order (as Hugging Face applies its warpers): penalties -> temperature -> top-k -> top-p -> min-p.
Everything is vectorised over the vocabulary; a distribution keeps only its candidate tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localspec.settings import SamplingSettings


@dataclass(frozen=True)
class Distribution:
    """A categorical distribution over a few candidate tokens (probs sum to 1)."""

    ids: np.ndarray  # int64 [m]
    probs: np.ndarray  # float64 [m]

    @classmethod
    def point(cls, token: int) -> Distribution:
        return cls(np.array([token], np.int64), np.array([1.0]))

    def prob(self, token: int) -> float:
        hit = np.flatnonzero(self.ids == token)
        return float(self.probs[hit[0]]) if hit.size else 0.0

    def without(self, token: int) -> Distribution:
        """The distribution with `token` removed and the rest renormalised."""
        keep = self.ids != token
        probs = self.probs[keep]
        return Distribution(self.ids[keep], probs / probs.sum())

    def sample(self, rng: np.random.Generator) -> int:
        return int(self.ids[min(np.searchsorted(np.cumsum(self.probs), rng.random() * self.probs.sum(),
                                                side="right"), len(self.ids) - 1)])

    def dense(self, n_vocab: int) -> np.ndarray:
        out = np.zeros(n_vocab)
        out[self.ids] = self.probs
        return out


def penalty_window(history: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """The recent tokens the penalties look at."""
    if settings.penalty_last_n < 0:
        return history
    return history[len(history) - settings.penalty_last_n:] if settings.penalty_last_n else history[:0]


def apply_penalties(logits: np.ndarray, history: np.ndarray, settings: SamplingSettings) -> np.ndarray:
    """llama.cpp's repetition / presence / frequency penalties over the recent window."""
    out = np.array(logits, dtype=np.float64)
    if not settings.has_penalties:
        return out
    ids, counts = np.unique(penalty_window(history, settings), return_counts=True)
    if ids.size == 0:
        return out
    values = out[ids]
    values = np.where(values > 0, values / settings.repeat_penalty, values * settings.repeat_penalty)
    out[ids] = values - counts * settings.frequency_penalty - settings.presence_penalty
    return out


def greedy_token(logits: np.ndarray, history: np.ndarray, settings: SamplingSettings) -> int:
    if settings.has_penalties:
        return int(np.argmax(apply_penalties(logits, history, settings)))
    return int(np.argmax(logits))


def make_distribution(logits: np.ndarray, history: np.ndarray, settings: SamplingSettings) -> Distribution:
    """The target distribution p for one position, given the tokens before it."""
    x = apply_penalties(logits, history, settings)
    if settings.greedy:
        return Distribution.point(int(np.argmax(x)))
    x /= settings.temperature
    n_vocab = x.shape[0]
    if 0 < settings.top_k < n_vocab:
        ids = np.argpartition(-x, settings.top_k - 1)[: settings.top_k]
    else:
        ids = np.arange(n_vocab)
    values = x[ids]
    if settings.top_p < 1.0 or settings.min_p > 0.0:
        order = np.argsort(-values, kind="stable")
        ids, values = ids[order], values[order]
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    keep = np.ones(ids.shape[0], bool)
    if settings.top_p < 1.0:
        keep &= (np.cumsum(probs) - probs) < settings.top_p  # smallest prefix reaching top_p
    if settings.min_p > 0.0:
        keep &= probs >= settings.min_p * probs[0]
    keep[0] = True
    ids, probs = ids[keep].astype(np.int64), probs[keep]
    return Distribution(ids, probs / probs.sum())

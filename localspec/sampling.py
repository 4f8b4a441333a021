"""Turn one row of logits into the distribution the next token is drawn from, and draw it.

Order (as Hugging Face applies its warpers): penalties -> temperature -> top-k -> top-p -> min-p.
Everything is vectorised over the vocabulary; a distribution keeps only its candidate tokens.

The draw is the Gumbel-max trick with noise fixed in advance for every (seed, position, token):
the token at a position is argmax(log p + g), an exact sample of p whose randomness does not
depend on anything drafted or on how the text was cut into verify steps. So with a seed,
speculative sampling emits the very text plain sampling does, and a drafter that knows the
noise can guess the sampled token rather than only the likeliest one.
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

    def dense(self, n_vocab: int) -> np.ndarray:
        out = np.zeros(n_vocab)
        out[self.ids] = self.probs
        return out


# splitmix64's constants (layerskip's device copy of the hash uses them too)
GOLDEN = 0x9E3779B97F4A7C15
MIX_MUL1, MIX_MUL2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GOLDEN, _MUL1, _MUL2 = np.uint64(GOLDEN), np.uint64(MIX_MUL1), np.uint64(MIX_MUL2)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit. Mixes `z` in place (a
    vocabulary's worth of fresh temporaries costs more in page faults than the arithmetic)."""
    z = np.asarray(z, np.uint64)
    shifted = np.empty_like(z)
    np.right_shift(z, np.uint64(30), out=shifted)
    z ^= shifted
    z *= _MUL1
    np.right_shift(z, np.uint64(27), out=shifted)
    z ^= shifted
    z *= _MUL2
    np.right_shift(z, np.uint64(31), out=shifted)
    z ^= shifted
    return z


@dataclass(frozen=True)
class GumbelNoise:
    """The sampler's randomness: one standard Gumbel per (position, token), hashed from a seed.

    Positions index the token history (the prompt's first token is 0). Drafters read it too:
    a guess scored by logits / temperature + noise is the guess the sampler would make.
    """

    seed: int
    temperature: float

    def gumbel(self, position: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Noise for `ids` at `position` (broadcast together), float64."""
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash intends
            key = _mix64(np.asarray(self.seed % 2**64, np.uint64) + _GOLDEN)
            key = _mix64(key ^ (np.asarray(position, np.int64).astype(np.uint64) * _GOLDEN))
            bits = _mix64(key + np.asarray(ids, np.int64).astype(np.uint64) * _MUL1)
        bits >>= np.uint64(11)
        noise = bits.astype(np.float64)
        noise += 0.5
        noise *= 2.0**-53  # uniform in (0, 1)
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        np.log(noise, out=noise)
        return np.negative(noise, out=noise)

    def sample(self, dist: Distribution, position: int) -> int:
        """The token drawn from `dist` at `position`: argmax(log p + g), distributed exactly as p."""
        with np.errstate(divide="ignore"):  # a probability that underflowed to 0 never wins
            scores = np.log(dist.probs) + self.gumbel(position, dist.ids)
        return int(dist.ids[np.argmax(scores)])

    def perturbed(self, logits: np.ndarray, position: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores whose argmax over `ids` is the sampler's choice if `logits` are the model's."""
        return logits / self.temperature + self.gumbel(position, ids)


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


def sampled_token(logits: np.ndarray, history: np.ndarray, settings: SamplingSettings, noise: GumbelNoise,
                  position: int) -> int:
    """The token the sampler draws at `position`: noise.sample(make_distribution(...)). Unfiltered,
    log p + g and logits / T + g differ by a constant, so the draw skips normalising the vocabulary."""
    if settings.top_k or settings.top_p < 1.0 or settings.min_p > 0.0:
        return noise.sample(make_distribution(logits, history, settings), position)
    x = apply_penalties(logits, history, settings)  # a float64 copy, scored in place
    x /= settings.temperature
    x += noise.gumbel(position, np.arange(x.shape[0]))
    return int(np.argmax(x))


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

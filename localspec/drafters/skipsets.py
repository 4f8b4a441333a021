"""Skip sets for self-speculation: which sublayers to leave out, and where the winners are kept.

`SkipSetSearch` proposes candidates over the bits of the optimisable sublayers (attention and
MLP of every layer but the first and the last, as SWIFT): SWIFT's start (every other layer), then
random picks near the best set so far and, every few evaluations, the candidate a Gaussian
process over the bits expects to improve on it most. The caller scores each candidate (see
`LayerSkipDrafter.optimise`). `SkipSetStore` keeps the chosen set per model and task type on
disk, so a later request starts from it instead of searching again.
"""

from __future__ import annotations

import json
import math

import numpy as np

from localspec.backends.torch_model import SkipSet
from localspec.paths import cache_dir, replace_file


class SkipSetSearch:
    """Random search plus Bayesian optimisation over the bits of optimisable sublayers."""

    def __init__(self, n_layer: int, bo_every: int = 5, max_skip_ratio: float = 0.75, seed: int = 0) -> None:
        self.n_layer = n_layer
        self.bo_every = bo_every  # a Bayesian-optimisation proposal every this many evaluations
        self.max_skip_ratio = max_skip_ratio  # of the optimisable sublayers
        # never the first or last layer (SWIFT); bits: attn of layers 1..L-2, then their MLPs
        self.layers = list(range(1, n_layer - 1))
        self.rng = np.random.default_rng(seed)
        self.tried: dict[bytes, float] = {}
        self.X: list[np.ndarray] = []
        self.y: list[float] = []

    def to_skip(self, bits: np.ndarray) -> SkipSet:
        m = len(self.layers)
        return SkipSet(frozenset(self.layers[i] for i in np.flatnonzero(bits[:m])),
                       frozenset(self.layers[i] for i in np.flatnonzero(bits[m:])))

    def first(self) -> np.ndarray:
        """SWIFT's start: every other optimisable layer skipped (attention and MLP)."""
        odd = np.array([i % 2 == 1 for i in self.layers], np.int8)
        return np.concatenate([odd, odd])

    def record(self, bits: np.ndarray, value: float) -> None:
        self.tried[bits.tobytes()] = value
        self.X.append(bits.astype(float))
        self.y.append(value)

    def propose(self) -> np.ndarray | None:
        if not self.X:
            return self.first()
        pool = self._pool(256)
        if not pool:
            return None
        if len(self.X) % self.bo_every == 0 and len(self.X) >= 4:
            return pool[int(np.argmax(self._expected_improvement(np.array(pool, float))))]
        best = self.X[int(np.argmax(self.y))].astype(np.int8)
        local = [b for b in pool if np.abs(b - best).sum() <= 2]
        return (local or pool)[int(self.rng.integers(len(local or pool)))]

    def _pool(self, size: int) -> list[np.ndarray]:
        """Untried candidates: all of them for small models, random ones otherwise."""
        n_bits = 2 * len(self.layers)
        limit = max(1, int(self.max_skip_ratio * n_bits))
        if n_bits <= 12:
            grid = ((np.arange(2 ** n_bits)[:, None] >> np.arange(n_bits)) & 1).astype(np.int8)
        else:
            grid = (self.rng.random((size, n_bits)) < self.rng.random((size, 1)) * 0.75).astype(np.int8)
        grid = grid[(grid.sum(1) >= 1) & (grid.sum(1) <= limit)]
        return [b for b in grid if b.tobytes() not in self.tried]

    def _expected_improvement(self, cand: np.ndarray, length: float = 2.0, noise: float = 1e-3
                              ) -> np.ndarray:
        """GP posterior (RBF on Hamming distance) -> expected improvement over the best value."""
        X, y = np.array(self.X), np.array(self.y)
        mu0, sd0 = y.mean(), y.std() + 1e-9
        z = (y - mu0) / sd0

        def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.exp(-np.abs(a[:, None, :] - b[None, :, :]).sum(-1) / length)

        K = kernel(X, X) + noise * np.eye(len(X))
        Ks = kernel(cand, X)
        alpha = np.linalg.solve(K, z)
        mean = Ks @ alpha
        var = np.clip(1.0 - np.einsum("ij,ji->i", Ks, np.linalg.solve(K, Ks.T)), 1e-12, None)
        sd = np.sqrt(var)
        gap = (mean - z.max()) / sd
        cdf = 0.5 * (1 + np.vectorize(math.erf)(gap / np.sqrt(2)))
        pdf = np.exp(-gap ** 2 / 2) / np.sqrt(2 * np.pi)
        return (mean - z.max()) * cdf + sd * pdf


class SkipSetStore:
    """Optimised skip sets on disk, per model fingerprint and task type."""

    def __init__(self, model_key: str) -> None:
        self.path = cache_dir() / "skip_sets.json"
        self.model_key = model_key

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            return {}

    def load(self, task: str) -> tuple[SkipSet | None, np.ndarray] | None:
        """(skip set, how often each of its guesses was right); a None set records that no set
        beat plain decoding."""
        entry = self._read().get(f"{self.model_key}|{task}")
        if not entry:
            return None
        ranks = np.asarray(entry.get("ranks") or [entry["score"]], float)  # older entries: top-1 only
        if entry.get("attn") is None:
            return None, ranks
        return SkipSet(frozenset(entry["attn"]), frozenset(entry["mlp"])), ranks

    def save(self, task: str, skip: SkipSet | None, ranks: np.ndarray) -> None:
        data = self._read()
        data[f"{self.model_key}|{task}"] = {"attn": None if skip is None else sorted(skip.attn),
                                            "mlp": None if skip is None else sorted(skip.mlp),
                                            "score": float(ranks[0]) if len(ranks) else 0.0,
                                            "ranks": [round(float(r), 4) for r in ranks]}
        replace_file(self.path, json.dumps(data, indent=1))

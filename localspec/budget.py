"""How much to speculate: the tree size that maximises expected tokens per second.

Two measurements drive it. The verify cost curve t(n) — seconds for one decode of n tokens — is
measured once per model, device and thread count and cached on disk. Each drafter's acceptance
is learned online per node slot (node i of its proposals, in proposal order): q_i is the rate at
which node i ends up on the accepted path. Since accepted nodes form one path, the expected
tokens from the first n nodes is 1 + sum(q_0..q_{n-1}) (the 1 is the bonus token), and the
budget keeps the n (0 = plain decoding) maximising that over t(n + 1) + drafting time.

The curve is measured after a short context, so real verify calls can cost more: each step's
measured time corrects t(n) online, as a ratio learnt per curve size (`VerifyTimes`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localspec.drafters.base import without_match
from localspec.paths import cache_dir, replace_file
from localspec.tree import DraftTree
from localspec.verify import Verdict

CURVE_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)
EXPLORE_COST = 1.25  # the most a look past the budget's choice may cost, as a share of its step
EXPLORE_SEEN = 8  # looks past the choice taken at any cost while the next node was seen fewer times


@dataclass(frozen=True)
class CostCurve:
    """Seconds for one verify decode of n tokens (root included), interpolated linearly."""

    sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def time(self, n: np.ndarray | int) -> np.ndarray:
        sizes = np.asarray(self.sizes, float)
        secs = np.asarray(self.seconds, float)
        n = np.asarray(n, float)
        slope = (secs[-1] - secs[-2]) / (sizes[-1] - sizes[-2]) if len(sizes) > 1 else 0.0
        beyond = secs[-1] + np.maximum(n - sizes[-1], 0) * max(slope, 0.0)
        return np.where(n > sizes[-1], beyond, np.interp(n, sizes, secs))

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": list(self.seconds)}

    @classmethod
    def from_json(cls, data: dict) -> CostCurve:
        return cls(tuple(int(s) for s in data["sizes"]), tuple(float(s) for s in data["seconds"]))


def measure_cost_curve(backend, sizes: tuple[int, ...] = CURVE_SIZES, repeats: int = 5,
                       context: int = 64) -> CostCurve:
    """Time verify decodes of chains of n - 1 drafts after a short context; median of repeats."""
    sizes = tuple(n for n in sizes if n <= min(backend.n_ctx - context - 1, getattr(backend, "n_batch", 512)))
    rng = np.random.default_rng(0)
    backend.truncate(0)
    backend.prefill(rng.integers(0, backend.n_vocab, context).tolist())
    root = int(rng.integers(0, backend.n_vocab))
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats + 1):  # the first round warms up caches and thread pools
        for n in sizes:
            tree = DraftTree.chain(rng.integers(0, backend.n_vocab, n - 1).tolist())
            start = time.perf_counter()
            logits = backend.verify(root, tree)
            logits[0, 0]  # make sure the result is there
            samples[n].append(time.perf_counter() - start)
            backend.commit(root, tree, [])
            backend.truncate(context)
    return CostCurve(sizes, tuple(float(np.median(samples[n][1:])) for n in sizes))


def model_fingerprint(path: str | Path) -> str:
    """A cheap identity for a model file: size plus a hash of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def cached_cost_curve(backend, model_path: str | Path, device: str, threads: int,
                      refresh: bool = False, kind: str = "llamacpp", sizes: tuple[int, ...] = CURVE_SIZES,
                      repeats: int = 5) -> CostCurve:
    """The cost curve for this model, backend kind, device and thread count, measured on first use."""
    key = f"{model_fingerprint(model_path)}|{kind}|{device}|{threads}"
    store = cache_dir() / "cost_curves.json"
    data: dict = {}
    if store.exists():
        try:
            data = json.loads(store.read_text())
        except (OSError, ValueError):
            data = {}
    if key in data and not refresh:
        return CostCurve.from_json(data[key])
    curve = measure_cost_curve(backend, sizes=sizes, repeats=repeats)
    data[key] = curve.to_json()
    replace_file(store, json.dumps(data, indent=1))
    return curve


@dataclass
class VerifyTimes:
    """The cost curve corrected by what verify calls really took, learnt online.

    The curve is timed after a 64-token context with the decode alone; real steps run after
    hundreds of tokens and add the call's own Python and logits copy. Each step's time moves
    the log-ratio real / curve at the curve sizes around its row count (by interpolation
    weight); sizes never seen take the ratio of the nearest seen ones.
    """

    curve: CostCurve
    alpha: float = 0.05
    sizes: np.ndarray = field(init=False)
    log_ratios: np.ndarray = field(init=False)
    seen: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.sizes = np.asarray(self.curve.sizes, float)
        self.log_ratios = np.zeros(len(self.sizes))
        self.seen = np.zeros(len(self.sizes), np.int64)

    def update(self, rows: int, seconds: float) -> None:
        sizes = self.sizes
        predicted = float(self.curve.time(rows))
        if predicted <= 0 or seconds <= 0:
            return
        target = float(np.log(seconds / predicted))
        hi = int(np.clip(np.searchsorted(sizes, rows), 1, len(sizes) - 1)) if len(sizes) > 1 else 0
        lo = max(hi - 1, 0)
        w_hi = float(np.clip((rows - sizes[lo]) / (sizes[hi] - sizes[lo]), 0.0, 1.0)) if hi > lo else 1.0
        for i, w in ((lo, 1.0 - w_hi), (hi, w_hi)):
            if w > 0:
                step = w * max(self.alpha, 1.0 / (self.seen[i] + 1))
                # one step moves the estimate by a factor e at most: a pause of the whole
                # process (GC, another program) must not teach a 10x cost
                self.log_ratios[i] += step * np.clip(target - self.log_ratios[i], -1.0, 1.0)
                self.seen[i] += 1

    def time(self, n: np.ndarray | int) -> np.ndarray:
        base = self.curve.time(n)
        seen = self.seen > 0
        if not seen.any():
            return base
        return base * np.exp(np.interp(np.asarray(n, float), self.sizes[seen], self.log_ratios[seen]))


@dataclass
class AcceptanceStats:
    """Online acceptance rate per node slot for one drafter.

    A slot's rate is the mean of its first verifications, then an exponential moving average, so
    a few steps are enough to learn it. Slots never verified yet are extrapolated from the decay
    between the last two that were: a retrieval chain accepted 95% of the time at slots 0-2
    promises as much further down, so the budget tries longer chains instead of waiting for
    exploration to reach them.
    """

    slots: int = 256
    alpha: float = 0.1
    prior: float = 0.5
    rates: np.ndarray = field(init=False)
    seen: np.ndarray = field(init=False)  # verifications of each slot so far
    draft_seconds: float = 0.0

    def __post_init__(self) -> None:
        # a start that halves per slot (node i is rarely accepted without the nodes before it),
        # so a new drafter or match length verifies a couple of nodes until its rates are known
        self.rates = self.prior ** np.arange(1, self.slots + 1, dtype=float)
        self.seen = np.zeros(self.slots, np.int64)

    def update(self, tree: DraftTree, verdict: Verdict, draft_seconds: float) -> None:
        n = min(len(tree), self.slots)
        hit = np.zeros(n)
        hit[[a for a in verdict.accepted if a < n]] = 1.0
        step = np.maximum(self.alpha, 1.0 / (self.seen[:n] + 2))  # the prior weighs one sample
        self.rates[:n] += step * (hit - self.rates[:n])
        self.seen[:n] += 1
        self.draft_seconds += self.alpha * (draft_seconds - self.draft_seconds)

    def expected(self, n: int | None = None) -> np.ndarray:
        """The first n slots' expected acceptance: learnt where verified, extrapolated past that."""
        n = self.slots if n is None else min(n, self.slots)
        n_seen = int(np.count_nonzero(self.seen[:n + 1]))  # slots are verified as prefixes
        if n_seen == 0 or n_seen >= n:
            return self.rates[:n]
        last = self.rates[n_seen - 1]
        before = self.rates[n_seen - 2] if n_seen >= 2 else 1.0
        ratio = min(last / before, 1.0) if before > 0 else 0.0
        out = self.rates[:n].copy()
        out[n_seen:] = last * ratio ** np.arange(1, n - n_seen + 1)
        return out


class SpeculationBudget:
    """Chooses each step how many of a proposal's nodes to verify."""

    def __init__(self, curve: CostCurve, max_nodes: int = 64, explore_every: int = 16) -> None:
        self.curve = curve
        self.verify_times = VerifyTimes(curve)
        self.max_nodes = max_nodes
        self.explore_every = explore_every
        self.stats: dict[str, AcceptanceStats] = {}
        self._steps = 0

    def _stats(self, source: str) -> AcceptanceStats:
        """A source met for the first time starts from what its family has learnt (the source
        without its match qualifier: "auto:recycling" for "auto:recycling:2c3"), not from the
        prior: drafters label trees finely, and each label learning from scratch would verify
        too few nodes of a good drafter for its first several steps."""
        if source not in self.stats:
            family = self.stats.get(f"{without_match(source)}:*")
            self.stats[source] = copy.deepcopy(family) if family is not None else AcceptanceStats()
        return self.stats[source]

    def best_size(self, source: str, available: int, extra_rows: int = 0) -> int:
        """argmax over n in [0, available] of expected tokens / expected seconds."""
        stats = self._stats(source)
        n_max = min(available, self.max_nodes, stats.slots)
        gain = 1.0 + np.concatenate([[0.0], np.cumsum(stats.expected(n_max))])
        costs = self.verify_times.time(np.arange(1 + extra_rows, n_max + 2 + extra_rows))  # t(extra + 1 + n)
        seconds = costs + np.where(np.arange(n_max + 1) > 0, stats.draft_seconds, 0.0)
        return int(np.argmax(gain / seconds))

    def trim(self, tree: DraftTree, extra_rows: int = 0) -> DraftTree:
        """Keep the best number of nodes; `extra_rows` more tokens ride in the same batch. A tree
        its drafter sized (from what it knows of each node, on the same cost curve) stays whole:
        per-slot rates learn slowly for a drafter that runs now and then, and would cut it."""
        self._steps += 1
        if tree.sized or not len(tree):
            return tree
        size = self.best_size(tree.source, len(tree), extra_rows)
        if self.explore_every and self._steps % self.explore_every == 0:
            # now and then look past the current choice: while the node after it is little known,
            # and later only where that costs little (on a steep curve, a CPU's, the wider tree
            # can cost two steps, more than confirming what is known is worth)
            wider = min(2 * size + 2, self.max_nodes, len(tree))
            rows = 1 + extra_rows
            seen = self._stats(tree.source).seen
            unknown = size < len(seen) and seen[size] < EXPLORE_SEEN
            cheap = self.verify_times.time(rows + wider) <= EXPLORE_COST * self.verify_times.time(rows + size)
            if unknown or cheap:
                size = wider
        return tree.truncated(size)

    def observe(self, tree: DraftTree, verdict: Verdict, draft_seconds: float,
                rows: int = 0, verify_seconds: float = 0.0) -> None:
        """Learn from one step: its tree's acceptance and, given `rows` (the tokens the verify
        decode ran) and its time, what verifying really costs."""
        if rows > 0:
            self.verify_times.update(rows, verify_seconds)
        if len(tree):
            self._stats(tree.source).update(tree, verdict, draft_seconds)
            family = without_match(tree.source)
            if family != tree.source:  # the family's stats, kept under "family:*" to seed its new labels
                self.stats.setdefault(f"{family}:*", AcceptanceStats()).update(tree, verdict, draft_seconds)

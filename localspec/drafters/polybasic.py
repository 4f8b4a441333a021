"""Polybasic drafting chains: a model-free drafter -> the layer-skipped model -> the full model.

Three chains compete, each a pipeline of verifiers of rising cost:
  free       the model-free tree (recycling + retrieval, `auto`) goes straight to the full model;
  skip       the layer-skipped model drafts on its own (its planned tree, as `layerskip`);
  free+skip  the skipped model verifies the model-free tree in one cheap tree forward, keeps the
             path it agrees with, extends it from there, and the full model verifies the result
             merged with the rest of the model-free tree.
Which chain runs comes from measured cost and acceptance, as in the budget: for each chain an
online estimate of tokens per step, drafting seconds and verified nodes, kept per regime of the
model-free tree (a long retrieval match yields far more tokens than a recycling tree, so their
steps are not averaged together); its speed is tokens over (drafting + t(nodes + 1)) from the
backend's cost curve, and the fastest runs (the others are retried now and then, the skipped
model's chain only where it could win with every draft accepted). The model-free tree is
drafted every step, so each verdict of another chain also says what the model-free chain alone
would have yielded on the same step (how far its tree follows the tokens the full model
produced): that chain's estimate keeps learning while the others run. The two chains of the
skipped model are credited with their paired gain over it, not with yields of their own: their
tokens are the model-free chain's plus that gain, so a stretch of poor steps, which lowers all
alike, does not make the skipped model look worth its cost. This is the seed paper's
stage-insertion rule measured rather than derived: inserting the skipped model pays iff it
raises tokens per second. The skip-set search is held to the same bar: past half its
evaluations it stops unless some set promises more than the model-free chain delivers.

Every stage is lossless for its verifier: the full model applies the engine's exact greedy or
sampling rule to whatever it is given, and `verify_chain_sampled` is the exact rule for drafts
drawn from a real distribution q (accept with min(1, p/q), else sample norm(max(p - q, 0))).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from localspec.backends.torch_backend import TorchBackend
from localspec.budget import CostCurve
from localspec.drafters import Drafter, make_drafter
from localspec.drafters.auto import AutoDrafter
from localspec.drafters.base import without_match
from localspec.drafters.layerskip import LayerSkipDrafter, LayerSkipSettings, draft_chain, guesses
from localspec.errors import InvalidSettingsError
from localspec.sampling import Distribution, GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict, verify_greedy

CHAINS = ("free", "skip", "free+skip")
MIN_RUNS = 4  # runs before a chain's estimate is trusted enough to retry it less often
MAX_EXPLORE_INTERVAL = 512


class Coin(Protocol):
    """The randomness of a real-q verifier; tests swap in an enumerator of every outcome."""

    def accept(self, probability: float) -> bool: ...

    def draw(self, dist: Distribution) -> int: ...


def residual(p: Distribution, q: Distribution) -> Distribution:
    """norm(max(p - q, 0)); p itself where q covers none of p's mass beyond p (never empty)."""
    q_at = np.array([q.prob(int(t)) for t in p.ids])
    left = np.maximum(p.probs - q_at, 0.0)
    if left.sum() <= 0.0:
        return p
    keep = left > 0
    return Distribution(p.ids[keep], left[keep] / left.sum())


def verify_chain_sampled(tokens: list[int], q_at: Callable[[int], Distribution],
                         p_at: Callable[[int], Distribution], coin: Coin) -> Verdict:
    """Speculative sampling on a chain drafted from q: token i is accepted with
    min(1, p_i(x) / q_i(x)); the first rejection draws from norm(max(p_i - q_i, 0)); if all are
    accepted the bonus comes from p after the last. Outputs are distributed exactly as p.
    Row i of p_at/q_at is the distribution before token i (row len(tokens) only for p)."""
    for i, token in enumerate(tokens):
        p, q = p_at(i), q_at(i)
        p_x, q_x = p.prob(token), q.prob(token)
        if p_x > 0.0 and coin.accept(min(1.0, p_x / q_x)):
            continue
        return Verdict(list(range(i)), list(tokens[:i]) + [coin.draw(residual(p, q))])
    return Verdict(list(range(len(tokens))), list(tokens) + [coin.draw(p_at(len(tokens)))])


@dataclass
class ChainStats:
    """Online estimates for one chain in one regime: the mean of its first runs, then moving
    averages (one unlucky first run must not hide a good chain behind ever longer retry
    intervals); and when the chain, while slower, is retried next."""

    tokens: float = 2.0  # optimistic, so every chain gets tried
    nodes: float = 4.0
    draft_seconds: float = 0.0
    runs: int = 0  # steps the chain ran
    yields: int = 0  # steps whose yield it learnt: its runs, and others' runs that showed it
    gain: float = 1.0  # skip, free+skip: tokens over the model-free chain's on the same steps (optimistic)
    gains: int = 0
    alpha: float = 0.2
    interval: int = 0  # steps between retries
    next_retry: int = 0  # the step of the next retry

    def average(self, estimate: float, value: float, count: int) -> float:
        """The mean of the first 1 / alpha values, then a moving average."""
        return estimate + max(self.alpha, 1.0 / (count + 1)) * (value - estimate)

    def update(self, tokens: int, nodes: int, draft_seconds: float) -> None:
        self.nodes = self.average(self.nodes, nodes, self.runs)
        self.draft_seconds = self.average(self.draft_seconds, draft_seconds, self.runs)
        self.runs += 1
        self.update_tokens(tokens)

    def update_tokens(self, tokens: int) -> None:
        """Learn a step's yield; alone, for a step the chain did not run (its costs stay)."""
        self.tokens = self.average(self.tokens, tokens, self.yields)
        self.yields += 1

    def update_gain(self, gain: int) -> None:
        self.gain = self.average(self.gain, gain, self.gains)
        self.gains += 1


class PolybasicDrafter:
    name = "polybasic"

    def __init__(self, backend: TorchBackend, curve: CostCurve, free: Drafter | None = None,
                 settings: LayerSkipSettings | None = None, explore_every: int = 24) -> None:
        self.backend = backend
        self.curve = curve
        self.free = free or AutoDrafter()
        self.skipper = LayerSkipDrafter(backend, curve, settings)
        self.explore_every = explore_every
        self.stats: dict[str, dict[str, ChainStats]] = {}  # regime -> chain -> estimates
        self.regime_steps: dict[str, int] = {}  # the clock of each regime's retry schedules
        # regime, chain, drafting seconds, and the model-free tree inside a refined one
        self._pending: tuple[str, str, float, DraftTree | None] | None = None

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        self.free.begin(prompt, noise)
        self.skipper.begin(prompt, noise)

    def chain_stats(self, regime: str) -> dict[str, ChainStats]:
        if regime not in self.stats:
            self.stats[regime] = {c: ChainStats(interval=self.explore_every, next_retry=self.explore_every)
                                  for c in CHAINS}
            self.regime_steps[regime] = 0
        return self.stats[regime]

    def choose(self, regime: str = "") -> str:
        """The fastest chain by its estimates in this regime; a slower one is retried after its
        interval, which doubles (up to MAX_EXPLORE_INTERVAL steps) each time it is retried and
        still slower, so exploring a chain that does not pay costs less and less. Intervals
        count the regime's own steps: a regime met one step in ten would otherwise retry its
        losers ten times as often, per step of its own, as the regime met all the time."""
        usable = [c for c in CHAINS if c == "free" or self.skipper.skip is not None]
        stats = self.chain_stats(regime)
        self.regime_steps[regime] += 1
        now = self.regime_steps[regime]
        best = max(usable, key=lambda c: self.speed(stats, c))
        stats[best].interval = self.explore_every
        stats[best].next_retry = now + self.explore_every
        due = [c for c in usable if c != best and self.explore_every and now >= stats[c].next_retry
               and self.could_beat(c, self.speed(stats, best))]
        if not due:
            return best
        chain = min(due, key=lambda c: stats[c].next_retry)
        retried = stats[chain]
        if retried.runs >= MIN_RUNS:
            retried.interval = min(2 * retried.interval, MAX_EXPLORE_INTERVAL)
        retried.next_retry = now + retried.interval
        return chain

    def could_beat(self, chain: str, speed: float) -> bool:
        """Whether `chain` could reach `speed` at all. A tree of the skipped model D levels deep
        yields at most D + 1 tokens for D draft levels at their measured cost and at least a
        verify of D + 1 rows; retrying it where no depth up to max_draft is faster even so only
        costs steps."""
        level = self.skipper.level_seconds
        if chain != "skip" or level is None:
            return True
        depths = np.arange(1, self.skipper.settings.max_draft + 1)
        return bool(np.max((depths + 1) / (depths * level + self.curve.time(depths + 1))) > speed)

    def speed(self, stats: dict[str, ChainStats], chain: str) -> float:
        """Estimated tokens per second of `chain`; a chain of the skipped model yields the
        model-free chain's tokens plus its paired gain, once a verdict has measured one."""
        s = stats[chain]
        tokens = stats["free"].tokens + s.gain if chain != "free" and s.gains else s.tokens
        return tokens / (s.draft_seconds + float(self.curve.time(s.nodes + 1)))

    def free_speed(self) -> float:
        """What the model-free chain delivers in tokens per full forward, the unit of a skip
        set's promised speed: its estimates in every regime met so far, weighted by the steps
        that showed its yield there (plain decoding's 1.0 before any)."""
        free = [chains["free"] for chains in self.stats.values() if chains["free"].yields]
        if not free:
            return 1.0
        tokens = sum(s.yields * s.tokens for s in free)
        seconds = sum(s.yields * (s.draft_seconds + float(self.curve.time(s.nodes + 1))) for s in free)
        return tokens / seconds * float(self.curve.time(1))

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        start = time.perf_counter()
        tree = self.free.propose(history, budget)  # cheap; its regime picks the estimates
        regime = without_match(tree.source)  # "auto:retrieval" or "auto:recycling"
        chain = self.choose(regime)
        free_tree = None
        if chain == "skip":
            free_tree, tree = tree, self.skipper.propose(history, budget)
            source = self.skipper.name
        else:
            source = tree.source  # with the match length, for the budget
            if chain == "free+skip" and len(tree):
                free_tree, tree = tree, self.refine(tree, int(history[-1]), budget)
        self._pending = (regime, chain, time.perf_counter() - start, free_tree)
        return DraftTree(tree.tokens, tree.parents, self.label(chain, source), tree.sized)

    def label(self, chain: str, source: str) -> str:
        """The budget's label for a tree of `chain` drafted as `source`."""
        return f"{self.name}:{chain}:{source}"

    def refine(self, tree: DraftTree, root: int, budget: int) -> DraftTree:
        """The skipped model verifies `tree` in one forward (by its guesses: its argmax, or when
        sampling the token the sampler's noise picks) and extends the path it accepts; the
        extended chain goes first, then the rest of the tree."""
        backend, skip, s = self.backend, self.skipper.skip, self.skipper.settings
        n_past = len(backend.tokens)
        tokens = np.concatenate([[root], tree.tokens])
        parents = np.concatenate([[-1], tree.parents + 1])
        depths = np.concatenate([[1], tree.depths + 1])
        logits = backend.run_tree(n_past, tokens, parents, depths, n_past, skip)
        guess = guesses(logits, n_past + depths, self.skipper.noise)  # row r predicts n_past + depths[r]
        top = logits.softmax(-1).gather(-1, guess)[:, 0].cpu().numpy()
        guess = guess[:, 0].cpu().numpy()
        verdict = verify_greedy(tree, guess)
        path, row = verdict.accepted, (verdict.accepted[-1] + 1 if verdict.accepted else 0)
        chain = tree.tokens[path].tolist()
        room = min(budget, s.max_draft + len(path)) - len(chain)
        if top[row] >= s.confidence and room > 0:
            bonus = int(guess[row])
            visible = [n_past] + [n_past + 1 + a for a in path]
            more = draft_chain(backend, skip, n_past, bonus, n_past + len(path) + 1, n_past + len(tokens),
                               visible, room - 1, s.confidence, self.skipper.noise)
            chain += [bonus, *more]
        return DraftTree.merge([DraftTree.chain(chain), tree]).truncated(budget)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        # the model-free drafter's own trees go back under its own labels: auto sizes its next
        # proposals by how much of its recent trees of a label was verified
        own = tree.source.removeprefix(self.label("free", ""))
        as_drafted = tree if own == tree.source else DraftTree(tree.tokens, tree.parents, own, tree.sized)
        self.free.observe(as_drafted, logits, verdict)
        if self._pending is not None:
            self.learn_chains(tree, verdict)
        if not self.skipper.settled:
            # a search step runs here, after the verdict, not in propose: the engine times propose
            # as drafting, and the budget would take the search for every step's drafting cost
            self.skipper.bar = self.free_speed()
            self.skipper.optimise()

    def learn_chains(self, tree: DraftTree, verdict: Verdict) -> None:
        """What the step that ran the pending chain says of it and of the model-free chain."""
        regime, chain, seconds, free_tree = self._pending
        self._pending = None
        stats = self.chain_stats(regime)
        stats[chain].update(verdict.n_accepted + 1, len(tree), seconds)
        if free_tree is not None:
            # how far the model-free tree follows what the full model produced, plus the bonus:
            # that tree's yield alone had it run, uncut by the budget (the sampler's noise is
            # fixed per position, so this holds when sampling too; at least this, if it follows
            # all of a skip chain's tokens). Without it the model-free chain's estimate would
            # stay frozen at a poor stretch while the skipped model's chain runs.
            shown = tree.tokens[verdict.accepted] if chain == "free+skip" else verdict.tokens
            alone = free_tree.prefix_depth(shown) + 1
            stats["free"].update_tokens(alone)
            stats[chain].update_gain(verdict.n_accepted + 1 - alone)
        if chain == "skip":
            self.skipper.record(tree, verdict)


def torch_drafter_factory(backend: TorchBackend, curve: CostCurve | None = None,
                          settings: LayerSkipSettings | None = None) -> Callable[[str], Drafter]:
    """Engine(new_drafter=...) for a torch backend: `layerskip` and `polybasic` get the model,
    every other name goes to `make_drafter`."""
    def new_drafter(name: str) -> Drafter:
        if name == "layerskip":
            return LayerSkipDrafter(backend, curve, settings)
        if name == "polybasic":
            if curve is None:
                raise InvalidSettingsError("polybasic needs the measured cost curve: drop --fixed-draft")
            return PolybasicDrafter(backend, curve, settings=settings)
        return make_drafter(name)

    return new_drafter

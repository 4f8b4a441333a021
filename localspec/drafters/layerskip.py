"""Self-speculation by layer skipping (SWIFT) with a dynamic exit and draft length (DEL).

The draft is the target itself with some attention/MLP sublayers left out; no extra weights.
The skip set is optimised on the fly from the model's own recent output: each candidate is scored
by how often the skipped model's argmax, teacher-forced over the last generated tokens, equals
the token the full model produced. Candidates come from random search around the best set so far
and, every few evaluations, from Bayesian optimisation (a Gaussian process over skip bits with
expected improvement). DEL's early-exit sets (every layer from e on skipped) are scored for all e
in one extra forward. A candidate's value is the speed it promises: expected accepted tokens per
unit of compute, for the best draft length. Optimising stops once the score passes a threshold
(or after a budget of evaluations) and the winner is cached per model and task type.

Drafting runs the skipped model one token at a time in the backend's cache slots right after the
committed prefix (the verify overwrites them) and stops when top-1 confidence falls below a
threshold or at the length that maximises expected tokens per second.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from localspec.backends.torch_backend import TorchBackend, chain_parents
from localspec.backends.torch_model import SkipSet
from localspec.budget import CostCurve, model_fingerprint
from localspec.paths import cache_dir
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict


@dataclass(frozen=True)
class LayerSkipSettings:
    confidence: float = 0.8  # stop drafting when the draft's top-1 probability is below this
    max_draft: int = 8  # deepest draft
    width: int = 3  # children tried per draft node (1 = SWIFT's chain)
    beam: int = 4  # nodes kept per draft level
    tree_stop: float = 0.2  # stop a tree draft when no new path is this likely
    window: int = 32  # recent generated tokens that score a skip set
    min_window: int = 12
    target_score: float = 0.93  # stop optimising when a set matches this often...
    max_evals: int = 40  # ...or after this many evaluations (half when no set promised a speed-up)
    bo_every: int = 5  # a Bayesian-optimisation proposal every this many evaluations
    max_skip_ratio: float = 0.75  # of the optimisable sublayers
    probe_every: int = 16  # when drafting does not pay, still draft once in this many steps
    seed: int = 0


def chain_speed(rates: np.ndarray, draft_cost: float, verify_cost: np.ndarray) -> tuple[float, int]:
    """Best (expected tokens / time, draft length k): rates[d] is P(accept at depth d + 1 | all
    before accepted), one draft step costs draft_cost, verify_cost[n] = t(n + 1) for n drafts."""
    reach = np.concatenate([[1.0], np.cumprod(rates)])  # P(first k drafts all accepted)
    tokens = np.cumsum(reach)  # expected tokens with k drafts: bonus + accepted
    k = np.arange(len(tokens))
    speed = tokens / (k * draft_cost + verify_cost[: len(tokens)])
    best = int(np.argmax(speed))
    return float(speed[best]), best


class SkipSetSearch:
    """Random search plus Bayesian optimisation over the bits of optimisable sublayers."""

    def __init__(self, n_layer: int, settings: LayerSkipSettings) -> None:
        self.n_layer = n_layer
        self.settings = settings
        # never the first or last layer (SWIFT); bits: attn of layers 1..L-2, then their MLPs
        self.layers = list(range(1, n_layer - 1))
        self.rng = np.random.default_rng(settings.seed)
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
        if len(self.X) % self.settings.bo_every == 0 and len(self.X) >= 4:
            return pool[int(np.argmax(self._expected_improvement(np.array(pool, float))))]
        best = self.X[int(np.argmax(self.y))].astype(np.int8)
        local = [b for b in pool if np.abs(b - best).sum() <= 2]
        return (local or pool)[int(self.rng.integers(len(local or pool)))]

    def _pool(self, size: int) -> list[np.ndarray]:
        """Untried candidates: all of them for small models, random ones otherwise."""
        n_bits = 2 * len(self.layers)
        limit = max(1, int(self.settings.max_skip_ratio * n_bits))
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


@dataclass
class DepthStats:
    """Online P(accept at depth d | accepted before), exponential moving averages."""

    prior: float
    alpha: float = 0.15
    rates: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rates = np.full(32, self.prior)

    def update(self, drafted: int, accepted: int) -> None:
        for d in range(min(drafted, accepted + 1, len(self.rates))):
            self.rates[d] += self.alpha * (float(d < accepted) - self.rates[d])


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

    def load(self, task: str) -> tuple[SkipSet | None, float] | None:
        """(skip set, match rate); a None set records that no set beat plain decoding."""
        entry = self._read().get(f"{self.model_key}|{task}")
        if not entry:
            return None
        if entry.get("attn") is None:
            return None, float(entry["score"])
        return SkipSet(frozenset(entry["attn"]), frozenset(entry["mlp"])), float(entry["score"])

    def save(self, task: str, skip: SkipSet | None, score: float) -> None:
        data = self._read()
        data[f"{self.model_key}|{task}"] = {"attn": None if skip is None else sorted(skip.attn),
                                            "mlp": None if skip is None else sorted(skip.mlp),
                                            "score": score}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{id(self)}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)


def guesses(logits: torch.Tensor, positions: np.ndarray | list[int], noise: GumbelNoise | None,
            k: int = 1) -> torch.Tensor:
    """The k best guesses [rows, k] at each row's `positions` (the token after the row): the top k
    logits when greedy; when sampling, the top k of logits / T + the sampler's noise there, so
    that the first guess is the token the sampler will draw if the full model agrees."""
    if noise is None:
        return logits.topk(k, dim=-1).indices
    scores = noise.perturbed(logits.float().cpu().numpy(), np.asarray(positions)[:, None],
                             np.arange(logits.shape[-1]))
    return torch.from_numpy(scores).to(logits.device).topk(k, dim=-1).indices


def draft_chain(backend: TorchBackend, skip: SkipSet, n_past: int, token: int, position: int, slot: int,
                visible: list[int], length: int, confidence: float,
                noise: GumbelNoise | None = None) -> list[int]:
    """Feed `token` (at rope `position`, cache `slot`) to the skipped model and keep drafting its
    guess while the guess's probability >= confidence. Each step sees the committed prefix
    [0, n_past), the `visible` slots and the chain's own slots."""
    out: list[int] = []
    seen = list(visible)
    for _ in range(length):
        seen.append(slot)
        mask = torch.zeros(1, slot + 1, dtype=torch.bool, device=backend.model.device)
        mask[0, :n_past] = True
        mask[0, seen] = True
        logits = backend.run([token], [position], [slot], mask, skip)
        nxt = int(guesses(logits, [position + 1], noise)[0, 0])
        if float(torch.softmax(logits[0], dim=-1)[nxt]) < confidence:
            break
        token = nxt
        out.append(token)
        position, slot = position + 1, slot + 1
    return out


def draft_tree(backend: TorchBackend, skip: SkipSet, root: int, depth: int, max_nodes: int, width: int,
               beam: int, stop: float, noise: GumbelNoise | None = None) -> DraftTree:
    """A dynamic draft tree from the skipped model, one batched forward per level (on CPU in bf16
    and on GPUs a forward of a few rows costs what one row costs). Each level keeps the `beam`
    children (top `width` per frontier node) of highest path probability; drafting stops when
    the best new path probability is below `stop`. Node i sits in cache slot n_past + 1 + i, as
    in the verify that follows (which overwrites it)."""
    n_past = len(backend.tokens)
    tokens: list[int] = []
    parents: list[int] = []
    path_logp: list[float] = []
    sees: dict[int, list[int]] = {-1: [n_past]}  # node -> the block's slots it attends
    frontier, feed = [-1], [root]
    for level in range(depth):
        slots = [n_past + 1 + node for node in frontier]
        mask = torch.zeros(len(frontier), max(slots) + 1, dtype=torch.bool, device=backend.model.device)
        mask[:, :n_past] = True
        for row, node in enumerate(frontier):
            mask[row, sees[node]] = True
        logits = backend.run(feed, [n_past + level] * len(feed), slots, mask, skip)
        top_ids = guesses(logits, [n_past + level + 1] * len(feed), noise, width)
        top_lp = torch.log_softmax(logits, -1).gather(-1, top_ids)
        base = torch.tensor([path_logp[n] if n >= 0 else 0.0 for n in frontier], device=logits.device)
        cand = (base[:, None] + top_lp).flatten()
        order = cand.argsort(descending=True)[: min(beam, max_nodes - len(tokens))].tolist()
        if not order or math.exp(float(cand[order[0]])) < stop:
            break
        ids, values = top_ids.flatten().tolist(), cand.tolist()
        new = []
        for flat in order:
            if math.exp(values[flat]) < stop:
                break
            parent, node = frontier[flat // width], len(tokens)
            tokens.append(ids[flat])
            parents.append(parent)
            path_logp.append(values[flat])
            sees[node] = sees[parent] + [n_past + 1 + node]
            new.append(node)
        frontier, feed = new, [tokens[n] for n in new]
    return DraftTree(np.asarray(tokens, np.int32), np.asarray(parents, np.int32))


class LayerSkipDrafter:
    """SWIFT self-speculation on a TorchBackend; hand it the backend (it runs the model)."""

    name = "layerskip"

    def __init__(self, backend: TorchBackend, curve: CostCurve | None = None,
                 settings: LayerSkipSettings | None = None, task: str | None = None) -> None:
        self.backend = backend
        self.settings = settings = settings or LayerSkipSettings()
        self.fixed_task = task
        n_layer = backend.model.args.n_layer
        self.search = SkipSetSearch(n_layer, settings)
        self.store = SkipSetStore(f"{model_fingerprint(backend.info.path)}|{n_layer}")
        # relative compute of a draft step per sublayer (weights read), plus a per-op floor
        self.sublayer_cost = backend.model.sublayer_costs() + 0.004
        sizes = np.arange(1, 34)
        t = curve.time(sizes) if curve is not None else 1.0 + 0.02 * (sizes - 1)
        self.verify_cost = t / t[0]  # in units of one full forward of one token
        self.forward_seconds = float(t[0]) if curve is not None else None
        self.level_seconds: float | None = None  # measured seconds of one draft level (EMA)
        self._declined = 0
        self.task = "text"
        self.skip: SkipSet | None = None
        self.score = 0.0
        self.settled = False
        self.depth = DepthStats(prior=0.7)
        self.noise: GumbelNoise | None = None  # the sampler's, for this request
        self._n_prompt = 0
        self.evals = 0  # counters, reported by whoever wants them
        self.search_seconds = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        task = self.fixed_task or self.task_type(prompt)
        if task != self.task or self.skip is None:
            self.task = task
            cached = self.store.load(task)
            self.search = SkipSetSearch(self.backend.model.args.n_layer, self.settings)
            if cached is not None:
                self.skip, self.score = cached
                self.settled = True
                self.depth = DepthStats(prior=self.score)
            else:
                self.skip, self.score, self.settled = None, 0.0, False
        self._n_prompt = len(prompt)
        self.noise = noise

    def task_type(self, prompt: np.ndarray) -> str:
        """'chat' when the prompt holds control tokens (a chat template), else 'text'."""
        for token in np.unique(prompt[-256:]).tolist():
            if not self.backend.token_bytes(token) and self.backend.special_token_text(token):
                return "chat"
        return "text"

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        if not self.settled:
            self.optimise(history)
        if self.skip is None or budget <= 0:
            return DraftTree.empty(self.name)
        _, length = chain_speed(self.depth.rates[: self.settings.max_draft], self.measured_draft_cost(),
                                self.verify_cost)
        if length == 0 and self._declined < self.settings.probe_every:
            self._declined += 1  # plain decoding is faster at the acceptance seen; probe now and then
            return DraftTree.empty(self.name)
        self._declined = 0
        s = self.settings
        start = time.perf_counter()
        tree = draft_tree(self.backend, self.skip, int(history[-1]), max(length, 1), budget, s.width,
                          s.beam, s.confidence if s.width == 1 else s.tree_stop, self.noise)
        if len(tree):
            seconds = (time.perf_counter() - start) / int(tree.depths.max())
            self.level_seconds = seconds if self.level_seconds is None else \
                self.level_seconds + 0.2 * (seconds - self.level_seconds)
        return DraftTree(tree.tokens, tree.parents, self.name)

    def measured_draft_cost(self) -> float:
        """One draft level in units of a full forward: timed once drafting has run, else estimated."""
        if self.level_seconds is None or self.forward_seconds is None:
            return self.draft_cost(self.skip)
        return self.level_seconds / self.forward_seconds

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        if tree.source == self.name:
            self.record(tree, verdict)

    def record(self, tree: DraftTree, verdict: Verdict) -> None:
        """Learn acceptance per depth from a verified tree this drafter drafted."""
        if len(tree):
            self.depth.update(int(tree.depths.max()), verdict.n_accepted)

    # -- skip-set optimisation ----------------------------------------------------------------

    def draft_cost(self, skip: SkipSet) -> float:
        bits = skip.as_bits(self.backend.model.args.n_layer).astype(bool)
        return float(1.0 - self.sublayer_cost[bits].sum())

    def value(self, skip: SkipSet, match: float) -> float:
        """Promised speed-up of drafting with `skip` at per-token match rate `match`."""
        rates = np.full(self.settings.max_draft, min(match, 0.999))
        return chain_speed(rates, self.draft_cost(skip), self.verify_cost)[0]

    def optimise(self, history: np.ndarray) -> None:
        """One search step over the window of recently generated tokens."""
        window = min(self.settings.window, len(history) - self._n_prompt)
        if window < self.settings.min_window:
            return
        start = time.perf_counter()
        if self.evals == 0:
            for skip, match in self.exit_matches(history, window):  # DEL: every exit layer at once
                self._consider(skip, match)
        bits = self.search.propose()
        if bits is None:
            self.settle()
            return
        skip = self.search.to_skip(bits)
        match = self.match_rate(history, window, skip)
        self.search.record(bits, self.value(skip, match))
        self._consider(skip, match)
        self.evals += 1
        self.search_seconds += time.perf_counter() - start
        hopeless = self.skip is None and self.evals >= self.settings.max_evals // 2
        if match >= self.settings.target_score or self.evals >= self.settings.max_evals or hopeless:
            self.settle()

    def _consider(self, skip: SkipSet, match: float) -> None:
        if self.value(skip, match) > (self.value(self.skip, self.score) if self.skip else 1.0):
            self.skip, self.score = skip, match
            self.depth = DepthStats(prior=match)

    def settle(self) -> None:
        self.settled = True
        self.store.save(self.task, self.skip, self.score)

    def _teacher_forced(self, history: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, int]:
        n_past = len(self.backend.tokens)  # history[-1] is the pending root, not yet in the cache
        first = n_past - window  # predict history[first + 1 .. n_past] from history[first .. n_past - 1]
        return history[first:n_past], history[first + 1:n_past + 1], first

    def match_rate(self, history: np.ndarray, window: int, skip: SkipSet) -> float:
        inputs, targets, first = self._teacher_forced(history, window)
        logits = self.backend.run_tree(first, inputs, chain_parents(window), np.arange(1, window + 1),
                                       self.backend.scratch_base, skip)
        return float((logits.argmax(-1).cpu().numpy() == targets).mean())

    def exit_matches(self, history: np.ndarray, window: int) -> list[tuple[SkipSet, float]]:
        """DEL: the match rate of exiting after each layer e (layers e.. skipped), one forward."""
        inputs, targets, first = self._teacher_forced(history, window)
        n_layer = self.backend.model.args.n_layer
        exits = self.backend.exit_argmax_tree(first, inputs, chain_parents(window), np.arange(1, window + 1),
                                              self.backend.scratch_base)
        return [(SkipSet(frozenset(range(e + 1, n_layer)), frozenset(range(e + 1, n_layer))),
                 float((exits[e] == targets).mean())) for e in range(n_layer - 1)]

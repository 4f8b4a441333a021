"""Self-speculation by layer skipping (SWIFT) with a dynamic exit and draft length (DEL).

The draft is the target itself with some attention/MLP sublayers left out; no extra weights.
The skip set is optimised on the fly from the model's own outputs: each candidate is scored,
teacher-forced over the last tokens of the request, by how often the full model's token is the
skipped model's first, second, ... guess. DEL's early-exit sets (every layer from e on skipped)
are scored for all e in the one forward that gives the full model's tokens; then the MLP tails
(the MLPs from layer e on), then candidates from random search around the best set so far and,
every few evaluations, from Bayesian optimisation (a Gaussian process over skip bits with
expected improvement). A candidate's value is the speed it
promises: expected tokens per unit of time of the best draft tree its guesses allow, at its
measured cost. Optimising stops once the first guess is right often enough, after a budget
of evaluations, or at half that budget when no set promises to beat the bar (plain decoding, or
for polybasic its model-free chain), and the winner is cached per model and task type (the
search's proposals and the cache: `skipsets.py`).

Drafting plans a tree of rank paths each step: the node (0, 2) is the skipped model's third
guess after its first guess. How likely each rank is right at each depth is learnt online;
the plan keeps the tree (possibly none: plain decoding) with the most expected tokens per
second, where a tree costs one skipped forward per level and a verify of its nodes on the
backend's measured cost curve. With a flat curve (a GPU, or a CPU in bf16) a wide tree of a
cheap, often-wrong draft pays; with a steep one a short chain of a good draft. Drafting stops
early when the draft's top-1 confidence falls below a threshold (SWIFT).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from localspec.backends.torch_backend import TorchBackend, chain_parents
from localspec.backends.torch_model import FULL, SkipSet
from localspec.budget import CostCurve, model_fingerprint
from localspec.drafters.recycling import RankTemplate
from localspec.drafters.skipsets import SkipSetSearch, SkipSetStore
from localspec.sampling import GOLDEN, MIX_MUL1, MIX_MUL2, GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict


@dataclass(frozen=True)
class LayerSkipSettings:
    confidence: float = 0.8  # stop drafting deeper when the draft's top-1 probability is below this
    max_draft: int = 8  # deepest draft
    ranks: int = 8  # guesses kept per drafted node: its children are among them
    window: int = 48  # recent tokens (prompt or generated) that score a skip set
    min_window: int = 12
    target_score: float = 0.93  # stop optimising when a set's first guess is right this often...
    max_evals: int = 40  # ...or after this many evaluations (half when no set beat the bar)
    bo_every: int = 5  # a Bayesian-optimisation proposal every this many evaluations
    max_skip_ratio: float = 0.75  # of the optimisable sublayers
    probe_every: int = 16  # when drafting does not pay, still draft once in this many steps
    seed: int = 0


def plan_tree(rates: np.ndarray, level_cost: float, verify_cost: np.ndarray, max_nodes: int
              ) -> tuple[list[tuple[int, ...]], float]:
    """The non-empty tree of rank paths that promises the most tokens per unit of time, and that
    speed (tokens per full forward; plain decoding's is 1 / verify_cost[0]).

    rates[d, r] is the chance that the rank-r guess at depth d + 1 is the target's token, given
    that the path above it is; a path's chance is the product along it. A tree of n nodes and
    depth D costs D draft levels and a verify of n + 1 rows (verify_cost[n]) and yields 1 + the
    sum of its paths' chances. For each depth limit the tree grows best-first (the most likely
    path next, so every prefix is a tree, and the likeliest one of its size) and each prefix is
    timed. Paths come best first, each after its parent."""
    n_depth = rates.shape[0]
    order = np.argsort(-rates, axis=1, kind="stable")  # ranks, likeliest first, per depth
    ranked = np.take_along_axis(rates, order, axis=1)
    max_nodes = min(max_nodes, len(verify_cost) - 1)
    best: tuple[list[tuple[int, ...]], float] = ([], 0.0)
    for limit in range(1, n_depth + 1):
        heap = [(-float(ranked[0, 0]), (0,), 1.0)]  # (-chance, positions in `order`, parent's chance)
        chosen: list[tuple[int, ...]] = []
        tokens, deepest = 1.0, 0
        while heap and len(chosen) < max_nodes:
            negative, path, above = heapq.heappop(heap)
            chosen.append(path)
            tokens -= negative
            deepest = max(deepest, len(path))
            speed = tokens / (deepest * level_cost + verify_cost[len(chosen)])
            if speed > best[1]:
                best = ([tuple(int(order[d, i]) for d, i in enumerate(p)) for p in chosen], speed)
            # the next sibling and the first child are the only candidates that can come next
            depth, last = len(path) - 1, path[-1]
            if last + 1 < ranked.shape[1]:
                sibling = path[:-1] + (last + 1,)
                heapq.heappush(heap, (-above * float(ranked[depth, last + 1]), sibling, above))
            if len(path) < limit:
                heapq.heappush(heap, (negative * float(ranked[depth + 1, 0]), path + (0,), -negative))
        if deepest < limit:
            break  # no node reached the limit: a deeper one grows the same tree
    return best


@dataclass
class RankStats:
    """Online P(the rank-r guess at depth d + 1 is right | the path above it is): the mean of
    the first observations (the prior weighing one), then an exponential moving average."""

    prior: np.ndarray  # [ranks], for every depth
    depth: int = 8
    alpha: float = 0.1
    rates: np.ndarray = field(init=False)
    seen: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rates = np.tile(np.asarray(self.prior, float), (self.depth, 1))
        self.seen = np.zeros(self.depth, np.int64)

    def update(self, depth: int, rank: int | None) -> None:
        """At `depth` (0-based) the target's token was the guess of `rank` (None: none of them)."""
        hit = np.zeros(self.rates.shape[1])
        if rank is not None:
            hit[rank] = 1.0
        step = max(self.alpha, 1.0 / (self.seen[depth] + 2))
        self.rates[depth] += step * (hit - self.rates[depth])
        self.seen[depth] += 1


def rank_frequencies(top: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[ranks]: how often each guess column of top [rows, ranks] holds the row's target."""
    return (top == np.asarray(targets)[:, None]).mean(axis=0)


def guesses(logits: torch.Tensor, positions: np.ndarray | list[int], noise: GumbelNoise | None,
            k: int = 1) -> torch.Tensor:
    """The k best guesses [rows, k] at each row's `positions` (the token after the row): the top k
    logits when greedy; when sampling, the top k of logits / T + the sampler's noise there, so
    that the first guess is the token the sampler will draw if the full model agrees."""
    if noise is None:
        return logits.topk(k, dim=-1).indices
    if logits.device.type == "cuda":  # the noise of a whole vocabulary per row: made where the logits are
        rows = torch.as_tensor(np.asarray(positions, np.int64), device=logits.device)[:, None]
        gumbel = device_gumbel(noise.seed, rows, torch.arange(logits.shape[-1], device=logits.device))
        return (logits.double() / noise.temperature + gumbel).topk(k, dim=-1).indices
    scores = noise.perturbed(logits.float().cpu().numpy(), np.asarray(positions)[:, None],
                             np.arange(logits.shape[-1]))
    return torch.from_numpy(scores).to(logits.device).topk(k, dim=-1).indices


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 holding uint64 bits (torch's >> keeps the sign)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shift_right(z, 30)) * _signed(MIX_MUL1)  # int64 products wrap as uint64 ones do
    z = (z ^ _shift_right(z, 27)) * _signed(MIX_MUL2)
    return z ^ _shift_right(z, 31)


def device_gumbel(seed: int, positions: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """GumbelNoise(seed, T).gumbel(positions, ids) computed with torch on the tensors' device, bit
    for bit the same hash (the logarithms may differ in the last place): a GPU hashes a
    vocabulary per row in microseconds where numpy, after a copy, takes milliseconds."""
    golden = _signed(GOLDEN)
    key = _mix64(torch.tensor(_signed((seed + GOLDEN) % 2**64), dtype=torch.int64, device=ids.device))
    key = _mix64(key ^ (positions * golden))
    bits = _mix64(key + ids * _signed(MIX_MUL1))
    uniform = (_shift_right(bits, 11).double() + 0.5) * 2.0 ** -53
    return -torch.log(-torch.log(uniform))


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


def draft_plan(backend: TorchBackend, skip: SkipSet, root: int, paths: list[tuple[int, ...]], ranks: int,
               confidence: float, noise: GumbelNoise | None = None
               ) -> tuple[DraftTree, dict[int, np.ndarray]]:
    """Draft a planned tree of rank paths: level by level, the skipped model runs the nodes that
    have children in the plan (first the root, node -1) in one batched forward, and each child
    takes its parent's guess of its rank. Node i sits in cache slot n_past + 1 + i, as in the
    verify that follows (which overwrites it). Drafting stops below a level whose best top-1
    probability is under `confidence`. Returns the tree and the `ranks` guesses of every node
    that ran (which show, once verified, which rank was right)."""
    n_past = len(backend.tokens)
    plan = RankTemplate(paths, ranks)
    parents, depths = plan.parents, plan.depths
    tokens = np.full(len(paths), -1, np.int64)
    sees: dict[int, list[int]] = {-1: [n_past]}  # node -> the slots it attends besides the prefix
    guessed: dict[int, np.ndarray] = {}
    reached = 0
    for level, children in enumerate(plan.levels, start=1):
        feed = sorted(set(parents[children].tolist()))
        slots = [n_past + 1 + node for node in feed]
        mask = torch.zeros(len(feed), max(slots) + 1, dtype=torch.bool, device=backend.model.device)
        mask[:, :n_past] = True
        for row, node in enumerate(feed):
            mask[row, sees[node]] = True
        inputs = [root if node < 0 else int(tokens[node]) for node in feed]
        logits = backend.run(inputs, [n_past + level - 1] * len(feed), slots, mask, skip)
        top = guesses(logits, [n_past + level] * len(feed), noise, ranks)
        sure = float(torch.softmax(logits, dim=-1).gather(-1, top[:, :1]).max())
        guessed.update(zip(feed, top.cpu().numpy(), strict=True))
        pairs = zip(parents[children].tolist(), plan.ranks[children].tolist(), strict=True)
        tokens[children] = [guessed[parent][rank] for parent, rank in pairs]
        for child in children.tolist():
            sees[child] = sees[int(parents[child])] + [n_past + 1 + child]
        reached = level
        if sure < confidence:
            break
    keep = depths <= reached
    new_index = np.cumsum(keep) - 1
    kept_parents = np.where(parents[keep] >= 0, new_index[np.maximum(parents[keep], 0)], -1)
    tree = DraftTree(tokens[keep].astype(np.int32), kept_parents.astype(np.int32))
    return tree, {(int(new_index[n]) if n >= 0 else -1): g for n, g in guessed.items()}


class LayerSkipDrafter:
    """SWIFT self-speculation on a TorchBackend; hand it the backend (it runs the model)."""

    name = "layerskip"

    def __init__(self, backend: TorchBackend, curve: CostCurve | None = None,
                 settings: LayerSkipSettings | None = None, task: str | None = None) -> None:
        self.backend = backend
        self.settings = settings = settings or LayerSkipSettings()
        self.fixed_task = task
        n_layer = backend.model.args.n_layer
        self.search = self.new_search()
        self.store = SkipSetStore(f"{model_fingerprint(backend.info.path)}|{n_layer}")
        sizes = np.arange(1, 34)
        t = curve.time(sizes) if curve is not None else 1.0 + 0.02 * (sizes - 1)
        self.verify_cost = t / t[0]  # in units of one full forward of one token
        self.forward_seconds = float(t[0]) if curve is not None else None
        self.level_seconds: float | None = None  # measured seconds of one draft level (EMA)
        self._sublayer_seconds: tuple[float, np.ndarray] | None = None  # see draft_cost
        self._declined = 0
        self._budget = 16  # nodes the engine allowed at the last step
        self._guessed: dict[int, np.ndarray] = {}  # the last draft's guesses per node that ran
        self.task = "text"
        self.skip: SkipSet | None = None
        self.ranks = np.zeros(settings.ranks)  # how often each guess of the skip set was right
        self.settled = False
        self.stats = self._new_stats()
        self.noise: GumbelNoise | None = None  # the sampler's, for this request
        self._window: tuple[int, np.ndarray, np.ndarray] | None = None  # first, tokens, targets
        self._tails = self.mlp_tails()  # candidates outside the search's bits, tried first
        # the speed (tokens per full forward) a skip set must promise for the search to go on
        # past half its evaluations: plain decoding's; polybasic raises it to its model-free chain's
        self.bar = 1.0
        self.evals = 0  # counters, reported by whoever wants them
        self.search_seconds = 0.0

    def new_search(self) -> SkipSetSearch:
        s = self.settings
        return SkipSetSearch(self.backend.model.args.n_layer, s.bo_every, s.max_skip_ratio, s.seed)

    @property
    def score(self) -> float:
        """How often the skip set's first guess was right when it was chosen."""
        return float(self.ranks[0])

    def _new_stats(self) -> RankStats:
        prior = np.zeros(self.settings.ranks)
        prior[: len(self.ranks)] = self.ranks[: self.settings.ranks]
        return RankStats(prior, depth=self.settings.max_draft)

    # -- lifecycle ----------------------------------------------------------------------------

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        task = self.fixed_task or self.task_type(prompt)
        if task != self.task or self.skip is None:
            self.task = task
            cached = self.store.load(task)
            self.search = self.new_search()
            self._tails = self.mlp_tails()
            if cached is not None:
                self.skip, self.ranks = cached
                self.settled = True
            else:
                self.skip, self.ranks, self.settled = None, np.zeros(self.settings.ranks), False
            self.stats = self._new_stats()
        self._window = None  # the cache may have changed
        self.noise = noise

    def task_type(self, prompt: np.ndarray) -> str:
        """'chat' when the prompt holds control tokens other than BOS (a chat template), else 'text'."""
        for token in np.unique(prompt[-256:]).tolist():
            if token == self.backend.bos_token:
                continue
            if not self.backend.token_bytes(token) and self.backend.special_token_text(token):
                return "chat"
        return "text"

    def plan(self, budget: int) -> tuple[list[tuple[int, ...]], float]:
        """The best tree of rank paths for the learnt rates, and its speed against plain decoding."""
        return plan_tree(self.stats.rates, self.measured_draft_cost(), self.verify_cost, budget)

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        self._guessed = {}
        self._budget = budget
        if self.skip is None or budget <= 0:
            return DraftTree.empty(self.name)
        paths, speed = self.plan(budget)
        if speed <= 1.0 and self._declined < self.settings.probe_every:
            self._declined += 1  # plain decoding is faster at the rates seen; probe now and then
            return DraftTree.empty(self.name)
        self._declined = 0
        s = self.settings
        start = time.perf_counter()
        tree, self._guessed = draft_plan(self.backend, self.skip, int(history[-1]), paths, s.ranks,
                                         s.confidence, self.noise)
        seconds = (time.perf_counter() - start) / int(tree.depths.max(initial=1))
        self.level_seconds = seconds if self.level_seconds is None else \
            self.level_seconds + 0.2 * (seconds - self.level_seconds)
        return DraftTree(tree.tokens, tree.parents, self.name, sized=True)

    def measured_draft_cost(self) -> float:
        """One draft level in units of a full forward: timed once drafting has run, else estimated."""
        if self.level_seconds is None or self.forward_seconds is None:
            return self.draft_cost(self.skip)
        return self.level_seconds / self.forward_seconds

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        if tree.source == self.name:
            self.record(tree, verdict)
        if not self.settled:  # after the verdict: the engine times only propose as drafting
            self.optimise()

    def record(self, tree: DraftTree, verdict: Verdict) -> None:
        """Learn from a verified tree this drafter drafted which rank was right at each depth
        down the accepted path, wherever the skipped model ran the node above."""
        node = -1
        for depth, token in enumerate(verdict.tokens[: self.stats.depth]):
            guess = self._guessed.get(node)
            if guess is None:
                break
            hit = np.flatnonzero(guess == token)
            self.stats.update(depth, int(hit[0]) if hit.size else None)
            if depth >= len(verdict.accepted):
                break
            node = verdict.accepted[depth]
        self._guessed = {}

    # -- skip-set optimisation ----------------------------------------------------------------

    def mlp_tails(self) -> list[SkipSet]:
        """The MLPs of layers e.. skipped, attention kept: cheap sets the search's bits (never
        the last layer, as SWIFT) cannot express; popped shortest tail first."""
        n_layer = self.backend.model.args.n_layer
        return [SkipSet(frozenset(), frozenset(range(e, n_layer))) for e in range(1, n_layer)]

    def draft_cost(self, skip: SkipSet | None) -> float:
        """One skipped forward of one token in units of a full one, from three timed forwards
        (nothing, attention only, everything): a fixed cost plus, per sublayer kept, a cost per
        weight read and one per sublayer."""
        if self._sublayer_seconds is None:
            self._sublayer_seconds = self._time_sublayers()
        fixed, per_sublayer = self._sublayer_seconds
        kept = ~(FULL if skip is None else skip).as_bits(self.backend.model.args.n_layer).astype(bool)
        return float((fixed + per_sublayer[kept].sum()) / (fixed + per_sublayer.sum()))

    def _time_sublayers(self) -> tuple[float, np.ndarray]:
        n_layer = self.backend.model.args.n_layer
        every = frozenset(range(n_layer))
        empty = self._time_forward(SkipSet(every, every))
        attn_only = self._time_forward(SkipSet(frozenset(), every))
        full = self._time_forward(FULL)
        weights = self.backend.model.sublayer_costs()  # weights read per sublayer (fractions)
        w_attn, w_mlp = weights[:n_layer].sum(), weights[n_layer:].sum()
        # attn_only - empty = n_layer * per + w_attn * per_weight; full - empty adds the MLPs
        system = np.array([[n_layer, w_attn], [2 * n_layer, w_attn + w_mlp]])
        try:
            per, per_weight = np.maximum(np.linalg.solve(system, [attn_only - empty, full - empty]), 0.0)
        except np.linalg.LinAlgError:
            per, per_weight = 0.0, max(full - empty, 0.0)
        return max(empty, 1e-6), per + per_weight * weights

    def _time_forward(self, skip: SkipSet, repeats: int = 3) -> float:
        """The fastest of a few one-token forwards of the skipped model in the scratch slots."""
        n_past, base = len(self.backend.tokens), self.backend.scratch_base
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            self.backend.run_tree(n_past, np.zeros(1, np.int64), chain_parents(1), np.ones(1, np.int64),
                                  base, skip)
            self.backend.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    def value(self, skip: SkipSet, ranks: np.ndarray) -> float:
        """Promised speed-up of drafting with `skip`, whose guesses were right with frequencies `ranks`."""
        rates = np.tile(ranks, (self.settings.max_draft, 1))
        return plan_tree(rates, self.draft_cost(skip), self.verify_cost, self._budget)[1]

    def optimise(self) -> None:
        """One search step: first the window and every exit layer, then one candidate a step."""
        start = time.perf_counter()
        if self._window is None:
            window = self.search_window()
            if window is not None:
                targets, exits = self.exit_ranks(*window)  # DEL: every exit layer in one forward
                self._window = (*window, targets)
                for skip, ranks in exits:
                    self._consider(skip, ranks)
            self.search_seconds += time.perf_counter() - start
            return
        bits = None
        if self._tails:
            skip = self._tails.pop()
        else:
            bits = self.search.propose()
            if bits is None:
                self.settle()
                return
            skip = self.search.to_skip(bits)
        ranks = self.rank_rates(skip)
        if bits is not None:
            self.search.record(bits, self.value(skip, ranks))
        self._consider(skip, ranks)
        self.evals += 1
        self.search_seconds += time.perf_counter() - start
        best = self.value(self.skip, self.ranks) if self.skip is not None else 0.0
        hopeless = best <= self.bar and self.evals >= self.settings.max_evals // 2
        if ranks[0] >= self.settings.target_score or self.evals >= self.settings.max_evals or hopeless:
            self.settle()

    def _consider(self, skip: SkipSet, ranks: np.ndarray) -> None:
        if self.value(skip, ranks) > (self.value(self.skip, self.ranks) if self.skip else 1.0):
            self.skip, self.ranks = skip, ranks
            self.stats = self._new_stats()

    def settle(self) -> None:
        self.settled = True
        self.store.save(self.task, self.skip, self.ranks)

    def search_window(self) -> tuple[int, np.ndarray] | None:
        """The last `window` cached tokens (first slot, tokens), None when too few. Every
        candidate of this request is scored on these rows against the full model's guesses
        there, so two candidates differ by what they skip, not by the text they met."""
        n_past = len(self.backend.tokens)
        window = min(self.settings.window, n_past - 1)
        if window < self.settings.min_window:
            return None
        first = n_past - window
        return first, np.asarray(self.backend.tokens[first:n_past], np.int64)

    def _guess(self, first: int, window: int):
        positions = np.arange(first + 1, first + 1 + window)  # row i predicts the token at first + 1 + i
        return lambda logits: guesses(logits, positions, self.noise, self.settings.ranks)

    def rank_rates(self, skip: SkipSet) -> np.ndarray:
        """How often the full model's token was the skipped model's first, second, ... guess."""
        first, inputs, targets = self._window
        n = len(inputs)
        logits = self.backend.run_tree(first, inputs, chain_parents(n), np.arange(1, n + 1),
                                       self.backend.scratch_base, skip)
        return rank_frequencies(self._guess(first, n)(logits).cpu().numpy(), targets)

    def exit_ranks(self, first: int, inputs: np.ndarray
                   ) -> tuple[np.ndarray, list[tuple[SkipSet, np.ndarray]]]:
        """DEL, in one forward over the window: the full model's guesses (its last exit, the
        window's targets) and the rank rates of exiting after each layer e (layers e.. skipped)."""
        n, n_layer = len(inputs), self.backend.model.args.n_layer
        exits = self.backend.exit_guesses_tree(first, inputs, chain_parents(n), np.arange(1, n + 1),
                                               self.backend.scratch_base, self._guess(first, n))
        targets = exits[-1][:, 0]
        return targets, [(SkipSet(frozenset(range(e + 1, n_layer)), frozenset(range(e + 1, n_layer))),
                          rank_frequencies(exits[e], targets)) for e in range(n_layer - 1)]

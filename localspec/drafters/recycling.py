"""Token Recycling (Luo et al. 2024): reuse the target's own top-k guesses as a draft tree.

Every verify batch yields the target's logits for every row it decoded, accepted or not. The
drafter keeps, for each token, the top-k next tokens of the last row that ended in it
(`adj[token] = topk(logits[row])`, overwritten, never merged), and drafts by walking a static
template of rank paths from the root: node (0, 1) is the root's rank-0 successor, then that
token's rank-1 successor. Drafting is one numpy gather per tree level; learning is one top-k
over the verified rows. The matrix persists across requests (and, with save/load, on disk).

Each successor's logit is kept beside it (float16). When sampling, the engine's sampler draws
argmax(logits / T + Gumbel noise) with noise fixed per position, and the drafter knows that
noise: it orders each node's successors by their kept logit / T plus the noise at the node's
position, so its first guess is the token the sampler would pick if the kept logits were the
model's, rather than the one the model likes most.

Unknown entries are -1, not 0 as in the paper: a never-seen token drafts nothing below it, so a
cold matrix proposes small trees instead of trees full of token 0 that only cost verify rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

PAPER_LEVEL_COUNTS = (8, 21, 25, 15, 8, 3)  # 80 nodes, depth 6, as in the paper's static tree
OBSERVE_CHUNK_ROWS = 32  # bounds the int64 index block of argpartition to 32 x n_vocab
RECYCLING_K = 8  # successors kept per token (the paper's k)


def rank_prior(rank: int) -> float:
    """Assumed chance that the rank-r successor is the right one (Zipf-like decay)."""
    return 0.6 / (rank + 1) ** 1.5


def path_score(path: Sequence[int]) -> float:
    return round(math.prod(rank_prior(r) for r in path), 12)  # rounded so equal products tie


def rank_template(level_counts: Sequence[int] = PAPER_LEVEL_COUNTS,
                  k: int = RECYCLING_K) -> list[tuple[int, ...]]:
    """Rank paths with `level_counts[d]` nodes at depth d + 1, best-scoring first.

    Level by level, the children of the kept parents compete on the product of rank priors and
    the best `level_counts[d]` are kept. The result is ordered by score, so a child (whose score
    is its parent's times a prior < 1) always follows its parent and every prefix is a tree.
    """
    chosen: list[tuple[int, ...]] = []
    level: list[tuple[int, ...]] = [()]
    for count in level_counts:
        candidates = sorted((p + (r,) for p in level for r in range(k)),
                            key=lambda t: (-path_score(t), t))
        if count > len(candidates):
            raise ValueError(f"a level of {count} nodes does not fit under {len(level)} parents")
        level = candidates[:count]
        chosen += level
    return sorted(chosen, key=lambda t: (-path_score(t), len(t), t))


class RankTemplate:
    """A static draft tree of rank paths, precomputed for per-level gathers."""

    def __init__(self, paths: Sequence[Sequence[int]], k: int) -> None:
        self.paths = [tuple(int(r) for r in p) for p in paths]
        index = {p: i for i, p in enumerate(self.paths)}
        if len(index) != len(self.paths) or () in index:
            raise ValueError("template paths must be unique and non-empty")
        if any(not 0 <= r < k for p in self.paths for r in p):
            raise ValueError(f"template ranks must be in [0, {k})")
        parents = [index.get(p[:-1], -1) if len(p) > 1 else -1 for p in self.paths]
        if any(len(p) > 1 and not 0 <= parent < i
               for i, (p, parent) in enumerate(zip(self.paths, parents, strict=True))):
            raise ValueError("every template path must follow its parent path")
        self.parents = np.asarray(parents, np.int32)
        self.ranks = np.asarray([p[-1] for p in self.paths], np.int32)
        self.depths = np.asarray([len(p) for p in self.paths], np.int32)
        # node indices of each depth, ascending, so the first n nodes of a level are a prefix
        self.levels = [np.flatnonzero(self.depths == d)
                       for d in range(1, int(self.depths.max(initial=0)) + 1)]

    def __len__(self) -> int:
        return len(self.paths)


class TokenRecyclingDrafter:
    name = "recycling"

    def __init__(self, n_vocab: int | None = None, k: int = RECYCLING_K,
                 template: Sequence[Sequence[int]] | None = None) -> None:
        """`n_vocab` may be left out: the matrix is then allocated from the first logits seen."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        if template is None:  # the paper's tree, without the ranks a smaller k does not keep
            template = [p for p in rank_template() if max(p) < k]
        self.template = RankTemplate(template, k)
        self.adj: np.ndarray | None = None  # int32 [n_vocab, k], -1 = unknown
        self.logit: np.ndarray | None = None  # float16 [n_vocab, k], each successor's logit
        self._root = -1  # the token whose logits are row 0 of the next verify batch
        self._noise: GumbelNoise | None = None
        if n_vocab is not None:
            self._allocate(n_vocab)

    @property
    def template_size(self) -> int:
        """Nodes in the full template; proposals are its first `budget` nodes, in order."""
        return len(self.template)

    @property
    def nbytes(self) -> int:
        return 0 if self.adj is None else int(self.adj.nbytes + self.logit.nbytes)

    def _allocate(self, n_vocab: int) -> np.ndarray:
        if n_vocab < self.k:
            raise ValueError(f"k={self.k} is larger than the vocabulary ({n_vocab})")
        self.adj = np.full((n_vocab, self.k), -1, np.int32)
        self.logit = np.zeros((n_vocab, self.k), np.float16)
        return self.adj

    def adopt(self, other: TokenRecyclingDrafter) -> None:
        """Take a copy of what another drafter (a loaded or primed one) has learnt."""
        self.adj = None if other.adj is None else other.adj.copy()
        self.logit = None if other.logit is None else other.logit.copy()

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        """Keep what was learnt; seed rank 0 of still-unknown tokens with their prompt successor."""
        self._root = int(prompt[-1]) if len(prompt) else -1
        self._noise = noise
        if self.adj is None or len(prompt) < 2:
            return
        prev, nxt = np.asarray(prompt[:-1]), np.asarray(prompt[1:])
        unknown = self.adj[prev, 0] < 0
        self.adj[prev[unknown], 0] = nxt[unknown]

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        """The first `budget` template nodes, each filled by one gather per level; unknowns pruned."""
        self._root = int(history[-1])
        n = min(budget, len(self.template))
        if self.adj is None or n <= 0:
            return DraftTree.empty(self.name)
        t = self.template
        toks = np.full(n + 1, -1, np.int32)  # toks[0] = root, toks[i + 1] = node i
        toks[0] = self._root
        for depth, level in enumerate(t.levels, 1):
            nodes = level[:np.searchsorted(level, n)]
            if nodes.size == 0:
                break
            above = toks[t.parents[nodes] + 1]
            # a node at depth d is the token at position len(history) - 1 + d
            successors = self.ranked(np.maximum(above, 0), len(history) - 1 + depth)
            toks[nodes + 1] = np.where(above >= 0, successors[np.arange(nodes.size), t.ranks[nodes]], -1)
        keep = toks[1:] >= 0  # a node under an unknown token is unknown too
        if keep.all():
            return DraftTree(toks[1:], t.parents[:n].copy(), self.name)
        new_index = np.cumsum(keep, dtype=np.int32) - 1
        parents = t.parents[:n][keep]
        parents = np.where(parents >= 0, new_index[np.maximum(parents, 0)], -1).astype(np.int32)
        return DraftTree(toks[1:][keep], parents, self.name)

    def ranked(self, tokens: np.ndarray, position: int) -> np.ndarray:
        """The successors of each token, best guess first, for the token at `position`: by the
        model's ranking when greedy, by kept logit / T + the sampler's noise when sampling."""
        successors = self.adj[tokens]
        if self._noise is None:
            return successors
        scores = self._noise.perturbed(self.logit[tokens].astype(np.float64), position,
                                       np.maximum(successors, 0))
        order = np.argsort(np.where(successors >= 0, -scores, np.inf), axis=1, kind="stable")
        return np.take_along_axis(successors, order, axis=1)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        """Overwrite the row of every verified token (root and all nodes) with its top-k successors."""
        rows = 1 + len(tree)
        n_vocab = self.adj.shape[0] if self.adj is not None else int(logits.shape[1])
        if logits.shape[0] < rows or logits.shape[1] != n_vocab:
            raise ValueError(f"logits of shape {logits.shape} do not match {rows} rows x {n_vocab} tokens")
        first = 0 if 0 <= self._root < n_vocab else 1
        row_tokens = np.concatenate([np.asarray([self._root], np.int32), tree.tokens])
        self.learn(row_tokens[first:], logits[first:rows])
        self._root = int(verdict.tokens[-1]) if verdict.tokens else -1  # the next pending token

    def learn(self, tokens: np.ndarray, logits: np.ndarray) -> None:
        """Overwrite the row of each token with the top-k of its logits row (one row per token)."""
        adj = self.adj if self.adj is not None else self._allocate(int(logits.shape[1]))
        n_vocab, k = adj.shape
        for start in range(0, len(tokens), OBSERVE_CHUNK_ROWS):  # a few chunks of rows, not tokens
            block = logits[start:min(start + OBSERVE_CHUNK_ROWS, len(tokens))]
            top = np.argpartition(block, n_vocab - k, axis=1)[:, n_vocab - k:]
            values = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-values, axis=1, kind="stable")
            rows = tokens[start:start + len(block)]
            adj[rows] = np.take_along_axis(top, order, axis=1)
            self.logit[rows] = np.take_along_axis(values, order, axis=1)

    def unknown_tokens(self, n_vocab: int) -> np.ndarray:
        """Tokens whose successors nothing has taught the matrix yet, lowest id first."""
        adj = self.adj if self.adj is not None else self._allocate(n_vocab)
        return np.flatnonzero(adj[:, 0] < 0)

    def save(self, path: str | Path) -> None:
        """Write the matrix (an .npz with `adj` and `logit`, both n_vocab x k)."""
        if self.adj is None:
            raise ValueError("nothing learnt yet: the matrix is not allocated")
        with open(path, "wb") as f:
            np.savez(f, adj=self.adj, logit=self.logit, version=np.int32(2))

    def load(self, path: str | Path) -> None:
        """Replace the matrix with a saved one of the same n_vocab and k."""
        with np.load(path, allow_pickle=False) as data:
            adj = np.asarray(data["adj"], np.int32)
            # version 1 kept no logits: a falling one per rank keeps the model's order
            logit = (np.asarray(data["logit"], np.float16) if "logit" in data
                     else np.broadcast_to(-np.arange(adj.shape[-1], dtype=np.float16), adj.shape).copy())
        if adj.ndim != 2 or adj.shape[1] != self.k:
            raise ValueError(f"saved matrix has shape {adj.shape}, expected [n_vocab, {self.k}]")
        if self.adj is not None and adj.shape != self.adj.shape:
            raise ValueError(f"saved matrix has shape {adj.shape}, expected {self.adj.shape}")
        if np.any((adj < -1) | (adj >= adj.shape[0])):
            raise ValueError("saved matrix holds token ids outside the vocabulary")
        if logit.shape != adj.shape:
            raise ValueError(f"saved logits have shape {logit.shape}, expected {adj.shape}")
        self.adj, self.logit = adj, logit

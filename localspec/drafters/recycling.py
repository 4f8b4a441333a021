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

Beside the matrix, rows are also kept per context of the last two and three tokens
(`ContextRows`), and a node drafts from the longest context that has a row: the model's guess
after `x` depends on what came before `x`, and a row learnt after the same few tokens is right
more often than one learnt wherever `x` last appeared.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

PAPER_LEVEL_COUNTS = (8, 21, 25, 15, 8, 3)  # 80 nodes, depth 6, as in the paper's static tree
OBSERVE_CHUNK_ROWS = 32  # bounds the candidate blocks of top_k to 32 rows at a time
TOP_K_WIDTH = 128  # top_k's block width: k blocks of it are searched instead of the whole row
RECYCLING_K = 8  # successors kept per token (the paper's k)
CONTEXT_ORDERS = (2, 3)  # context lengths that get rows of their own, besides single tokens
CONTEXT_SLOTS = 1 << 16  # rows for contexts (a direct-mapped hash table)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing's multiplier


def top_k(rows: np.ndarray, k: int, width: int = TOP_K_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest entries, largest first: (ids, values), both [len(rows), k].

    An argpartition of every full row costs about 60 us per 8k-token row here, more than the
    rest of a step's drafting. Each of the k largest lies in a block of `width` whose maximum is
    among the k largest block maxima, so only those k blocks are searched."""
    n_rows, n = rows.shape
    line = np.arange(n_rows)[:, None]
    if n <= width * k:
        candidates = np.broadcast_to(np.arange(n), (n_rows, n))
    else:
        padded = -(-n // width) * width
        if padded != n:
            rows = np.concatenate([rows, np.full((n_rows, padded - n), -np.inf, rows.dtype)], axis=1)
        maxima = rows.reshape(n_rows, -1, width).max(axis=2)
        blocks = np.argpartition(maxima, maxima.shape[1] - k, axis=1)[:, -k:]
        candidates = (blocks[:, :, None] * width + np.arange(width)).reshape(n_rows, -1)
    values = rows[line, candidates]
    best = np.argpartition(values, values.shape[1] - k, axis=1)[:, -k:]
    ids, values = candidates[line, best], values[line, best]
    order = np.argsort(-values, axis=1, kind="stable")
    return ids[line, order], values[line, order]


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


def suffix_numbers(contexts: np.ndarray, n_vocab: int) -> np.ndarray:
    """[n, L] for contexts [n, L] of token ids, oldest first: column j holds the last j + 1
    tokens read as one base-n_vocab number (column 0 is the last token), -1 where any of them
    is unknown (-1)."""
    contexts = np.asarray(contexts, np.int64)
    numbers = np.empty_like(contexts)
    numbers[:, 0] = contexts[:, -1]
    for j in range(1, contexts.shape[1]):
        older = contexts[:, -1 - j]
        numbers[:, j] = np.where((numbers[:, j - 1] >= 0) & (older >= 0),
                                 older * n_vocab**j + numbers[:, j - 1], -1)
    return numbers


def extend_numbers(numbers: np.ndarray, tokens: np.ndarray, n_vocab: int) -> np.ndarray:
    """The suffix numbers of contexts `numbers` with one more token each appended."""
    tokens = np.asarray(tokens, np.int64)
    longer = numbers[:, :-1] * n_vocab + tokens[:, None]
    known = (numbers[:, :-1] >= 0) & (tokens[:, None] >= 0)
    return np.concatenate([tokens[:, None], np.where(known, longer, -1)], axis=1)


class ContextRows:
    """Successor rows keyed by the last few tokens (two or three: `orders`) instead of the last.

    One direct-mapped hash table for every context length: a context's slot is a hash of its
    key, the slot keeps the full key to tell contexts hashed there apart, and a newly learnt
    context evicts whatever held its slot. A context of length o is keyed by its suffix number
    plus n_vocab ** o, so lengths never share a key. Contexts are given as suffix numbers.
    """

    def __init__(self, orders: Sequence[int], n_vocab: int, k: int, slots: int = CONTEXT_SLOTS) -> None:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, got {slots}")
        self.orders = tuple(sorted(set(orders)))
        if not self.orders or self.orders[0] < 2:
            raise ValueError(f"context lengths must be at least 2, got {tuple(orders)}")
        if 2 * n_vocab ** self.orders[-1] >= 2**63:
            raise ValueError(f"contexts of {self.orders[-1]} tokens of a {n_vocab}-token vocabulary "
                             "do not fit a key")
        self.n_vocab = n_vocab
        self.columns = np.asarray(self.orders) - 1
        self.tags = np.asarray([n_vocab**o for o in self.orders], np.int64)
        self.shift = np.uint64(64 - (slots.bit_length() - 1))
        self.keys = np.full(slots, -1, np.int64)
        self.adj = np.full((slots, k), -1, np.int32)
        self.logit = np.zeros((slots, k), np.float16)

    @property
    def width(self) -> int:
        """Suffix-number columns a context needs (its longest length)."""
        return self.orders[-1]

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.adj.nbytes + self.logit.nbytes)

    def _keys(self, numbers: np.ndarray) -> np.ndarray:
        raw = numbers[:, self.columns]
        return np.where(raw >= 0, raw + self.tags, -1)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        """Fibonacci hashing of contiguous int64 keys (an unknown key's slot is never trusted)."""
        return ((keys.view(np.uint64) * _GOLDEN) >> self.shift).view(np.int64)

    def _held(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of each context's suffixes of every length, and whether each holds its row."""
        keys = self._keys(numbers)
        slots = self._slots(keys)
        return slots, (keys >= 0) & (self.keys[slots] == keys)

    def find(self, numbers: np.ndarray) -> np.ndarray:
        """The slot holding the row of each context's longest suffix that has one, -1 where none."""
        slots, held = self._held(numbers)
        longest = held.shape[1] - 1 - np.argmax(held[:, ::-1], axis=1)
        return np.where(held.any(axis=1), slots[np.arange(len(slots)), longest], -1)

    def found_lengths(self, numbers: np.ndarray) -> np.ndarray:
        """The length of each context's longest suffix that has a row, 0 where none."""
        _, held = self._held(numbers)
        return np.max(np.where(held, np.asarray(self.orders), 0), axis=1)

    def store(self, numbers: np.ndarray, adj: np.ndarray, logit: np.ndarray) -> None:
        """Rows for every length of each context; a later context wins a slot they share."""
        keys = self._keys(numbers).ravel()
        rows = np.repeat(np.arange(len(numbers)), len(self.orders))
        known = keys >= 0
        keys, rows = keys[known], rows[known]
        slots = self._slots(keys)
        self.keys[slots], self.adj[slots], self.logit[slots] = keys, adj[rows], logit[rows]


def context_tokens(tokens: np.ndarray, up: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """[len(ends), length]: the tokens of the path ending at each index of `tokens`, oldest
    first, following `up` (each index's predecessor, -1 for none); -1 past the start."""
    columns = [np.asarray(ends, np.int64)]
    for _ in range(length - 1):
        prev = columns[-1]
        columns.append(np.where(prev >= 0, up[np.maximum(prev, 0)], -1))
    index = np.stack(columns[::-1], axis=1)
    return np.where(index >= 0, tokens[np.maximum(index, 0)], -1)


class TokenRecyclingDrafter:
    name = "recycling"

    def __init__(self, n_vocab: int | None = None, k: int = RECYCLING_K,
                 template: Sequence[Sequence[int]] | None = None,
                 context_orders: Sequence[int] = CONTEXT_ORDERS, context_slots: int = CONTEXT_SLOTS) -> None:
        """`n_vocab` may be left out: the matrix is then allocated from the first logits seen.
        `context_orders=()` keeps the paper's matrix alone."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if any(order < 2 for order in context_orders):
            raise ValueError(f"context lengths must be at least 2, got {tuple(context_orders)}")
        self.k = k
        if template is None:  # the paper's tree, without the ranks a smaller k does not keep
            template = [p for p in rank_template() if max(p) < k]
        self.template = RankTemplate(template, k)
        self.context_orders = tuple(sorted(set(context_orders)))
        self.context_slots = context_slots
        self.adj: np.ndarray | None = None  # int32 [n_vocab, k], -1 = unknown
        self.logit: np.ndarray | None = None  # float16 [n_vocab, k], each successor's logit
        self.contexts: ContextRows | None = None  # rows per context of context_orders tokens
        # the last tokens of the history, ending with the pending token: row 0 of the next batch
        self._tail = np.full(max(self.context_orders, default=1), -1, np.int64)
        self._noise: GumbelNoise | None = None
        if n_vocab is not None:
            self._allocate(n_vocab)

    @property
    def template_size(self) -> int:
        """Nodes in the full template; proposals are its first `budget` nodes, in order."""
        return len(self.template)

    @property
    def nbytes(self) -> int:
        """The [n_vocab, k] matrix's size (the context table is `context_nbytes`)."""
        return 0 if self.adj is None else int(self.adj.nbytes + self.logit.nbytes)

    @property
    def context_nbytes(self) -> int:
        return 0 if self.contexts is None else self.contexts.nbytes

    def _new_contexts(self, n_vocab: int) -> ContextRows | None:
        if not self.context_orders or 2 * n_vocab ** self.context_orders[-1] >= 2**63:
            return None
        return ContextRows(self.context_orders, n_vocab, self.k, self.context_slots)

    def _allocate(self, n_vocab: int) -> np.ndarray:
        if n_vocab < self.k:
            raise ValueError(f"k={self.k} is larger than the vocabulary ({n_vocab})")
        self.adj = np.full((n_vocab, self.k), -1, np.int32)
        self.logit = np.zeros((n_vocab, self.k), np.float16)
        self.contexts = self._new_contexts(n_vocab)
        return self.adj

    def adopt(self, other: TokenRecyclingDrafter) -> None:
        """Take a copy of what another drafter (a loaded or primed one) has learnt."""
        self.adj = None if other.adj is None else other.adj.copy()
        self.logit = None if other.logit is None else other.logit.copy()
        self.contexts = None if self.adj is None else self._new_contexts(self.adj.shape[0])
        theirs = other.contexts
        if self.contexts is not None and theirs is not None and theirs.orders == self.contexts.orders:
            self.contexts = copy.deepcopy(theirs)

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        """Keep what was learnt; seed rank 0 of still-unknown tokens with their prompt successor."""
        self._tail = self._tail_of(prompt)
        self._noise = noise
        if self.adj is None or len(prompt) < 2:
            return
        prev, nxt = np.asarray(prompt[:-1]), np.asarray(prompt[1:])
        unknown = self.adj[prev, 0] < 0
        self.adj[prev[unknown], 0] = nxt[unknown]

    def _tail_of(self, tokens: np.ndarray) -> np.ndarray:
        """The last len(self._tail) of `tokens`, padded in front with -1 (unknown)."""
        tail = np.full(len(self._tail), -1, np.int64)
        last = np.asarray(tokens[max(len(tokens) - len(tail), 0):], np.int64)
        tail[len(tail) - len(last):] = last
        return tail

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        """The first `budget` template nodes, each filled by one gather per level; unknowns pruned."""
        self._tail = self._tail_of(history)
        n = min(budget, len(self.template))
        if self.adj is None or n <= 0:
            return DraftTree.empty(self.name)
        t = self.template
        n_vocab = self.adj.shape[0]
        # suffix numbers of the context ending at the root (row 0) and at each node (row i + 1)
        numbers = np.full((n + 1, len(self._tail)), -1, np.int64)
        numbers[0] = suffix_numbers(self._tail[None], n_vocab)[0]
        for depth, level in enumerate(t.levels, 1):
            nodes = level[:np.searchsorted(level, n)]
            if nodes.size == 0:
                break
            above = numbers[t.parents[nodes] + 1]
            # a node at depth d is the token at position len(history) - 1 + d
            successors = self.ranked(above, len(history) - 1 + depth)
            picked = np.where(above[:, 0] >= 0, successors[np.arange(nodes.size), t.ranks[nodes]], -1)
            numbers[nodes + 1] = extend_numbers(above, picked, n_vocab)
        toks = numbers[1:, 0].astype(np.int32)
        keep = toks >= 0  # a node under an unknown token is unknown too
        if keep.all():
            return DraftTree(toks, t.parents[:n].copy(), self.name)
        new_index = np.cumsum(keep, dtype=np.int32) - 1
        parents = t.parents[:n][keep]
        parents = np.where(parents >= 0, new_index[np.maximum(parents, 0)], -1).astype(np.int32)
        return DraftTree(toks[keep], parents, self.name)

    def root_context(self, history: np.ndarray) -> int:
        """The length of the context whose row a proposal after `history` drafts from: one of
        context_orders, 1 for the last token's own row, 0 when nothing is known after it."""
        root = int(history[-1]) if len(history) else -1
        if self.adj is None or not 0 <= root < self.adj.shape[0] or self.adj[root, 0] < 0:
            return 0
        if self.contexts is None:
            return 1
        numbers = suffix_numbers(self._tail_of(history)[None], self.adj.shape[0])
        return int(self.contexts.found_lengths(numbers)[0]) or 1

    def ranked(self, contexts: np.ndarray, position: int) -> np.ndarray:
        """The successors after each context, best guess first, for the token at `position`: by
        the model's ranking when greedy, by kept logit / T + the sampler's noise when sampling.
        A context is a row of suffix numbers (see `suffix_numbers`), or just a token; its
        successors come from its longest suffix with a row of its own, else from the matrix."""
        numbers = np.asarray(contexts, np.int64).reshape(len(contexts), -1)
        last = np.maximum(numbers[:, 0], 0)
        successors, logit = self.adj[last], self.logit[last]
        if self.contexts is not None and numbers.shape[1] >= self.contexts.width:
            slots = self.contexts.find(numbers)
            found = (slots >= 0)[:, None]
            successors = np.where(found, self.contexts.adj[slots], successors)
            logit = np.where(found, self.contexts.logit[slots], logit)
        if self._noise is None:
            return successors
        scores = self._noise.perturbed(logit.astype(np.float64), position, np.maximum(successors, 0))
        order = np.argsort(np.where(successors >= 0, -scores, np.inf), axis=1, kind="stable")
        return np.take_along_axis(successors, order, axis=1)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        """Overwrite the row of every verified token (root and all nodes) with its top-k
        successors, in the matrix and under the contexts they were verified in."""
        rows = 1 + len(tree)
        n_vocab = self.adj.shape[0] if self.adj is not None else int(logits.shape[1])
        if logits.shape[0] < rows or logits.shape[1] != n_vocab:
            raise ValueError(f"logits of shape {logits.shape} do not match {rows} rows x {n_vocab} tokens")
        m = len(self._tail)
        # the tail, then the nodes; each entry's predecessor: the one before it, a node's parent
        tokens = np.concatenate([self._tail, tree.tokens])
        up = np.concatenate([np.arange(-1, m - 1), np.where(tree.parents >= 0, tree.parents + m, m - 1)])
        contexts = context_tokens(tokens, up, np.arange(m - 1, m + len(tree)), m)
        first = 0 if 0 <= self._tail[-1] < n_vocab else 1
        self.learn(contexts[first:, -1], logits[first:rows], suffix_numbers(contexts[first:], n_vocab))
        # the tail now ends with the next pending token
        self._tail = self._tail_of(np.concatenate([self._tail, np.asarray(verdict.tokens, np.int64)]))

    def learn(self, tokens: np.ndarray, logits: np.ndarray, contexts: np.ndarray | None = None) -> None:
        """Overwrite the row of each token with the top-k of its logits row (one row per token),
        and, given their suffix numbers, the rows of the contexts that end in them."""
        adj = self.adj if self.adj is not None else self._allocate(int(logits.shape[1]))
        for start in range(0, len(tokens), OBSERVE_CHUNK_ROWS):  # a few chunks of rows, not tokens
            block = logits[start:min(start + OBSERVE_CHUNK_ROWS, len(tokens))]
            top, values = top_k(block, self.k)
            rows = tokens[start:start + len(block)]
            adj[rows], self.logit[rows] = top, values
            if contexts is not None and self.contexts is not None:
                self.contexts.store(contexts[start:start + len(block)], top, values.astype(np.float16))

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

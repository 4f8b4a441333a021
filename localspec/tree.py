"""Draft trees: the tokens a drafter proposes, verified by the target in one batch.

Row 0 of a verify batch is the pending token (the root: last token sampled, not yet in the KV
cache); tree node i is row i + 1. A node's parent is -1 when it hangs off the root. Nodes are
stored parents-first, so a single forward pass over the arrays visits every parent before its
children.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray  # int32 [n]
    parents: np.ndarray  # int32 [n], -1 = child of the root
    source: str = ""  # which drafter proposed it (for stats)
    sized: bool = False  # the drafter chose its size against the verify cost curve itself

    def __post_init__(self) -> None:
        if self.tokens.shape != self.parents.shape or self.tokens.ndim != 1:
            raise ValueError("tokens and parents must be 1-D arrays of one length")
        if np.any(self.parents >= np.arange(len(self.parents))):
            raise ValueError("every parent must come before its child")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def empty(cls, source: str = "") -> DraftTree:
        return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), source)

    @classmethod
    def chain(cls, tokens: Sequence[int], source: str = "") -> DraftTree:
        n = len(tokens)
        return cls(np.asarray(tokens, np.int32).reshape(n), np.arange(-1, n - 1, dtype=np.int32), source)

    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[int]], source: str = "") -> DraftTree:
        """A trie of the given token paths: shared prefixes become shared nodes."""
        return cls.merge([cls.chain(p) for p in paths], source)

    @classmethod
    def merge(cls, trees: Sequence[DraftTree], source: str = "") -> DraftTree:
        """Fuse trees by longest-prefix matching: a node whose path already exists is shared.

        Nodes keep their order (first tree first, each in its own order), so truncating the
        result keeps the first tree's most valuable nodes.
        """
        tokens: list[int] = []
        parents: list[int] = []
        child_of: dict[tuple[int, int], int] = {}
        for tree in trees:
            mapped = np.empty(len(tree), np.int64)
            pairs = zip(tree.tokens.tolist(), tree.parents.tolist(), strict=True)
            for i, (token, parent) in enumerate(pairs):
                key = (int(mapped[parent]) if parent >= 0 else -1, token)
                if key not in child_of:
                    child_of[key] = len(tokens)
                    tokens.append(token)
                    parents.append(key[0])
                mapped[i] = child_of[key]
        return cls(np.asarray(tokens, np.int32), np.asarray(parents, np.int32), source)

    @property
    def depths(self) -> np.ndarray:
        """Depth of each node (children of the root have depth 1)."""
        depth = np.zeros(len(self), np.int32)
        for i, parent in enumerate(self.parents.tolist()):
            depth[i] = 1 if parent < 0 else depth[parent] + 1
        return depth

    def children(self, node: int) -> np.ndarray:
        """Indices of the children of `node` (-1 = root), in proposal order."""
        return np.flatnonzero(self.parents == node)

    def leaves(self) -> np.ndarray:
        is_parent = np.zeros(len(self), bool)
        is_parent[self.parents[self.parents >= 0]] = True
        return np.flatnonzero(~is_parent)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to `node` (empty for the root)."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]

    def prefix_depth(self, tokens: Sequence[int]) -> int:
        """How many leading `tokens` are a path of this tree from the root."""
        node = -1
        for depth, token in enumerate(tokens):
            match = np.flatnonzero((self.parents == node) & (self.tokens == token))
            if not match.size:
                return depth
            node = int(match[0])
        return len(tokens)

    def depth_first_order(self) -> np.ndarray:
        """Node indices in pre-order, children in proposal order: the first path comes first."""
        children: list[list[int]] = [[] for _ in range(len(self) + 1)]  # slot 0 = the root
        for node, parent in enumerate(self.parents.tolist()):
            children[parent + 1].append(node)
        order: list[int] = []
        stack = children[0][::-1]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(children[node + 1][::-1])
        return np.asarray(order, np.int64)

    def paths(self) -> list[list[int]]:
        """Token sequences of every root-to-leaf path."""
        return [self.tokens[self.path_to(int(leaf))].tolist() for leaf in self.leaves()]

    def truncated(self, max_nodes: int) -> DraftTree:
        """The first `max_nodes` nodes; still a valid tree since parents come first."""
        if max_nodes >= len(self):
            return self
        return DraftTree(self.tokens[:max_nodes], self.parents[:max_nodes], self.source, self.sized)

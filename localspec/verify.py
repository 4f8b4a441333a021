"""Lossless tree verification: which draft nodes the target accepts, plus one bonus token.

Both rules are pure functions of the tree and the target's choice after each row. Row 0 is the
root (pending token); node i is row i + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from localspec.tree import DraftTree


@dataclass(frozen=True)
class Verdict:
    accepted: list[int]  # accepted node indices, root's child first
    tokens: list[int]  # accepted draft tokens followed by the bonus token

    @property
    def n_accepted(self) -> int:
        return len(self.accepted)


def verify_greedy(tree: DraftTree, targets: np.ndarray) -> Verdict:
    """Longest path whose every token equals the target's choice at its parent.

    `targets[r]` is the target's token after row r (its argmax), for r = 0..len(tree).
    """
    n = len(tree)
    if n == 0:
        return Verdict([], [int(targets[0])])
    parent_rows = tree.parents + 1
    matches = tree.tokens == targets[parent_rows]
    depth_ok = np.zeros(n, np.int32)  # length of the all-matching path ending at node, else 0
    for i in range(n):  # parents come first; n is the tree size, not the vocabulary
        if matches[i]:
            parent = tree.parents[i]
            depth_ok[i] = 1 if parent < 0 else (depth_ok[parent] + 1 if depth_ok[parent] else 0)
    best = int(np.argmax(depth_ok))
    if depth_ok[best] == 0:
        return Verdict([], [int(targets[0])])
    path = tree.path_to(best)
    return Verdict(path, tree.tokens[path].tolist() + [int(targets[best + 1])])


def verify_walk(tree: DraftTree, target_at: Callable[[int], int]) -> Verdict:
    """Walk down from the root: at each row the target picks a token; follow the child that
    drafted it (the first, if siblings repeat), else stop with it as the bonus token.

    `target_at(row)` is the target's token after a row (0 = root, node i = i + 1): its sampled
    token, or its argmax under penalties that depend on the path. Only rows on the path are asked
    for. Each emitted token is the one the target would have chosen decoding one token at a time,
    so the rule is exact whenever the choice at a position does not depend on the draft, as the
    sampler's position-keyed noise guarantees.
    """
    accepted: list[int] = []
    node = -1
    while True:
        token = target_at(node + 1)
        children = tree.children(node)
        hit = children[tree.tokens[children] == token]
        if hit.size == 0:
            return Verdict(accepted, tree.tokens[accepted].tolist() + [token])
        node = int(hit[0])
        accepted.append(node)

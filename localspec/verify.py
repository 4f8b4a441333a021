"""Lossless tree verification: which draft nodes the target accepts, plus one bonus token.

Both rules are pure functions of the tree, the target's view of each row, and (for sampling)
a source of randomness. Row 0 is the root (pending token); node i is row i + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from localspec.sampling import Distribution
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


class Coin(Protocol):
    """The randomness a sampling verifier uses; swapped for an enumerator in exactness tests."""

    def accept(self, probability: float) -> bool: ...

    def draw(self, dist: Distribution) -> int: ...


class RandomCoin:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def accept(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def draw(self, dist: Distribution) -> int:
        return dist.sample(self.rng)


def verify_sampling(tree: DraftTree, dist_at: Callable[[int], Distribution], coin: Coin) -> Verdict:
    """Walk down from the root trying children in order (SpecInfer's rule with a point-mass draft).

    At a node with target p, child c is accepted with probability p(c); on rejection p(c) is set
    to 0 and p renormalised before the next child. If every child is rejected, the bonus token is
    drawn from what is left of p; after a leaf it is drawn from the leaf's p. The emitted tokens
    are therefore distributed exactly as sampling from the target one token at a time.
    `dist_at(row)` gives p at a row (0 = root, node i = i + 1); only visited rows are asked for.
    """
    accepted: list[int] = []
    node = -1
    p = dist_at(0)
    while True:
        for child in tree.children(node).tolist():
            token = int(tree.tokens[child])
            p_token = p.prob(token)
            if p_token > 0.0 and coin.accept(p_token):
                accepted.append(child)
                node = child
                p = dist_at(child + 1)
                break
            if p_token > 0.0:
                p = p.without(token)
        else:
            bonus = coin.draw(p)
            return Verdict(accepted, tree.tokens[accepted].tolist() + [bonus])

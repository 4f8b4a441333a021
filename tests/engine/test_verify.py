"""The verifiers: greedy picks the longest agreeing path; sampling is exactly lossless."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from localspec.sampling import Distribution
from localspec.tree import DraftTree
from localspec.verify import verify_greedy, verify_sampling


def test_greedy_takes_longest_matching_path_and_bonus():
    #   root -> 5 -> 6 -> 7      targets: root->5, 5->6, 6->8 (so 7 is rejected)
    #        -> 9 -> 3
    tree = DraftTree.from_paths([[5, 6, 7], [9, 3]])
    targets = np.zeros(len(tree) + 1, np.int64)
    targets[0] = 5
    targets[1 + 0] = 6  # after node 0 (token 5)
    targets[1 + 1] = 8  # after node 1 (token 6)
    verdict = verify_greedy(tree, targets)
    assert verdict.accepted == [0, 1]
    assert verdict.tokens == [5, 6, 8]


def test_greedy_all_wrong_gives_only_the_bonus():
    tree = DraftTree.chain([1, 2, 3])
    verdict = verify_greedy(tree, np.array([4, 0, 0, 0]))
    assert verdict.accepted == [] and verdict.tokens == [4]


def test_greedy_prefers_first_of_duplicate_siblings():
    tree = DraftTree(np.array([5, 5], np.int32), np.array([-1, -1], np.int32))
    verdict = verify_greedy(tree, np.array([5, 1, 2]))
    assert verdict.accepted == [0] and verdict.tokens == [5, 1]


class EnumeratingCoin:
    """Replays a fixed prefix of decisions, then takes the first branch, recording alternatives.

    Driving a verifier to exhaustion gives the exact probability of every output.
    """

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.position = 0
        self.weight = 1.0
        self.choices: list[tuple[int, list[float]]] = []  # (choice taken, option weights)

    def _decide(self, weights: list[float]) -> int:
        if self.position < len(self.script):
            choice = self.script[self.position]
        else:
            choice = next(i for i, w in enumerate(weights) if w > 0)
        self.choices.append((choice, weights))
        self.position += 1
        self.weight *= weights[choice]
        return choice

    def accept(self, probability: float) -> bool:
        return self._decide([probability, 1.0 - probability]) == 0

    def draw(self, dist: Distribution) -> int:
        return int(dist.ids[self._decide(dist.probs.tolist())])


def enumerate_outputs(run) -> dict[tuple[int, ...], float]:
    outputs: dict[tuple[int, ...], float] = defaultdict(float)
    stack: list[list[int]] = [[]]
    while stack:
        coin = EnumeratingCoin(stack.pop())
        tokens = run(coin)
        if coin.weight > 0:
            outputs[tuple(tokens)] += coin.weight
        for depth in range(len(coin.script), len(coin.choices)):  # branch at every new decision
            taken, weights = coin.choices[depth]
            prefix = [c for c, _ in coin.choices[:depth]]
            stack.extend(prefix + [alt] for alt, w in enumerate(weights) if alt != taken and w > 0)
    return outputs


def random_dist(rng: np.random.Generator, n_vocab: int) -> Distribution:
    probs = rng.dirichlet(np.full(n_vocab, 0.7))
    probs[rng.random(n_vocab) < 0.2] = 0.0  # some tokens impossible, as after top-k / top-p
    probs[rng.integers(n_vocab)] += 0.05
    keep = probs > 0
    return Distribution(np.flatnonzero(keep).astype(np.int64), probs[keep] / probs[keep].sum())


def target_outputs(tree: DraftTree, dists: dict[int, Distribution]) -> dict[tuple[int, ...], float]:
    """The ideal process: sample from p one token at a time, continue while the token is a child."""
    outputs: dict[tuple[int, ...], float] = defaultdict(float)

    def walk(node: int, prefix: tuple[int, ...], weight: float) -> None:
        dist = dists[node + 1]
        children = tree.children(node)
        for token, p in zip(dist.ids.tolist(), dist.probs.tolist(), strict=False):
            hit = [c for c in children.tolist() if tree.tokens[c] == token]
            if hit:
                walk(hit[0], prefix + (token,), weight * p)
            else:
                outputs[prefix + (token,)] += weight * p

    walk(-1, (), 1.0)
    return outputs


def random_tree_with_duplicates(rng: np.random.Generator, n_nodes: int, n_vocab: int) -> DraftTree:
    parents = np.array([rng.integers(-1, i) if i else -1 for i in range(n_nodes)], np.int32)
    tokens = rng.integers(0, n_vocab, n_nodes).astype(np.int32)
    return DraftTree(tokens, parents)


@pytest.mark.parametrize("seed", range(25))
def test_sampling_verifier_output_distribution_is_exactly_the_target(seed):
    rng = np.random.default_rng(seed)
    n_vocab = int(rng.integers(2, 6))
    tree = random_tree_with_duplicates(rng, int(rng.integers(1, 9)), n_vocab)
    # the same context gives the same distribution: duplicate siblings share theirs
    dists: dict[int, Distribution] = {0: random_dist(rng, n_vocab)}
    for node in range(len(tree)):
        path = tuple(tree.tokens[tree.path_to(node)].tolist())
        same = next((n for n in range(node) if tuple(tree.tokens[tree.path_to(n)].tolist()) == path),
                    None)
        dists[node + 1] = dists[same + 1] if same is not None else random_dist(rng, n_vocab)

    got = enumerate_outputs(lambda coin: verify_sampling(tree, dists.__getitem__, coin).tokens)
    want = target_outputs(tree, dists)
    assert set(got) == {k for k, v in want.items() if v > 0}
    for output, probability in want.items():
        assert got[output] == pytest.approx(probability, abs=1e-12)
    assert sum(got.values()) == pytest.approx(1.0)


def test_sampling_verifier_with_point_mass_accepts_a_correct_chain():
    tree = DraftTree.chain([1, 2, 3])
    dists = {0: Distribution.point(1), 1: Distribution.point(2), 2: Distribution.point(3),
             3: Distribution.point(4)}
    got = enumerate_outputs(lambda coin: verify_sampling(tree, dists.__getitem__, coin).tokens)
    assert got == {(1, 2, 3, 4): 1.0}

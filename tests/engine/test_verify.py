"""The verifiers: greedy picks the longest agreeing path; the walk follows the target's choices,
so with position-keyed noise it samples exactly what plain decoding samples."""

from __future__ import annotations

import numpy as np
import pytest

from localspec.sampling import Distribution, GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import verify_greedy, verify_walk


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


def random_dist(rng: np.random.Generator, n_vocab: int) -> Distribution:
    probs = rng.dirichlet(np.full(n_vocab, 0.7))
    probs[rng.random(n_vocab) < 0.2] = 0.0  # some tokens impossible, as after top-k / top-p
    probs[rng.integers(n_vocab)] += 0.05
    keep = probs > 0
    return Distribution(np.flatnonzero(keep).astype(np.int64), probs[keep] / probs[keep].sum())


def random_tree_with_duplicates(rng: np.random.Generator, n_nodes: int, n_vocab: int) -> DraftTree:
    parents = np.array([rng.integers(-1, i) if i else -1 for i in range(n_nodes)], np.int32)
    tokens = rng.integers(0, n_vocab, n_nodes).astype(np.int32)
    return DraftTree(tokens, parents)


@pytest.mark.parametrize("seed", range(10))
def test_walk_with_argmax_targets_agrees_with_the_greedy_verifier(seed):
    rng = np.random.default_rng(seed)
    tree = random_tree_with_duplicates(rng, int(rng.integers(1, 12)), 3)
    targets = rng.integers(0, 3, len(tree) + 1)
    asked: list[int] = []

    def target_at(row: int) -> int:
        asked.append(row)
        return int(targets[row])

    walked, greedy = verify_walk(tree, target_at), verify_greedy(tree, targets)
    assert walked == greedy
    assert asked == [0] + [node + 1 for node in walked.accepted]  # only the rows on the path


@pytest.mark.parametrize("seed", range(25))
def test_sampled_walk_emits_exactly_what_sampling_one_token_at_a_time_emits(seed):
    """Per-prefix distributions (the same prefix, the same p); with the same noise, the walk over
    any tree yields the tokens plain sampling yields, up to its bonus token."""
    rng = np.random.default_rng(seed)
    n_vocab, start = 4, int(rng.integers(0, 1000))
    tree = random_tree_with_duplicates(rng, int(rng.integers(1, 12)), n_vocab)
    dists: dict[tuple[int, ...], Distribution] = {}

    def p(prefix: tuple[int, ...]) -> Distribution:
        return dists.setdefault(prefix, random_dist(rng, n_vocab))

    for noise_seed in range(40):
        noise = GumbelNoise(noise_seed, 1.0)

        def target_at(row: int, noise: GumbelNoise = noise) -> int:
            prefix = tuple(tree.tokens[tree.path_to(row - 1)].tolist()) if row else ()
            return noise.sample(p(prefix), start + len(prefix))

        verdict = verify_walk(tree, target_at)
        plain: list[int] = []
        while len(plain) < len(verdict.tokens):
            plain.append(noise.sample(p(tuple(plain)), start + len(plain)))
        assert verdict.tokens == plain

"""DraftTree construction, merging and truncation."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from localspec.tree import DraftTree

paths_strategy = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=5), min_size=1, max_size=6)


@given(st.lists(paths_strategy, min_size=1, max_size=3))
def test_merge_keeps_every_input_path_and_shares_prefixes(groups):
    trees = [DraftTree.from_paths(paths) for paths in groups]
    merged = DraftTree.merge(trees)
    merged_paths = {tuple(p) for p in merged.paths()}
    for tree in trees:
        for path in tree.paths():  # every input path is a prefix of some merged path
            assert any(mp[: len(path)] == tuple(path) for mp in merged_paths)
    keys = [(int(p), int(t)) for p, t in zip(merged.parents, merged.tokens, strict=False)]
    assert len(keys) == len(set(keys))  # no duplicated (parent, token)
    assert np.all(merged.parents < np.arange(len(merged)))


def test_merge_keeps_the_first_trees_order():
    a = DraftTree.chain([1, 2, 3])
    b = DraftTree.from_paths([[1, 2, 9], [7]])
    merged = DraftTree.merge([a, b])
    assert merged.tokens.tolist() == [1, 2, 3, 9, 7]
    assert merged.parents.tolist() == [-1, 0, 1, 1, -1]


def test_truncation_is_always_a_valid_tree():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 4], [5, 6]])
    for n in range(len(tree) + 1):
        small = tree.truncated(n)
        assert len(small) == n and np.all(small.parents < np.arange(n))


def test_depths_leaves_and_paths():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 4], [5]])
    assert tree.depths.tolist() == [1, 2, 3, 2, 1]
    assert sorted(tree.paths()) == [[1, 2, 3], [1, 4], [5]]
    assert tree.path_to(2) == [0, 1, 2]


@given(st.lists(st.integers(-1, 30), min_size=1, max_size=30))
def test_depth_first_order_visits_parents_first_and_keeps_each_subtree_together(raw_parents):
    parents = np.array([min(p, i - 1) for i, p in enumerate(raw_parents)], np.int32)
    tree = DraftTree(np.arange(len(parents), dtype=np.int32), parents)
    order = tree.depth_first_order().tolist()
    assert sorted(order) == list(range(len(tree)))
    position = {node: i for i, node in enumerate(order)}
    for node in range(len(tree)):
        assert parents[node] < 0 or position[int(parents[node])] < position[node]
        subtree = {n for n in range(len(tree)) if node in tree.path_to(n)}
        assert sorted(position[n] for n in subtree) == list(
            range(position[node], position[node] + len(subtree)))


def test_depth_first_order_puts_the_first_path_first():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 4], [5, 6]])  # BFS would be 1 5 2 4 6 3
    assert tree.tokens[tree.depth_first_order()].tolist() == [1, 2, 3, 4, 5, 6]
    bfs = DraftTree(np.array([1, 5, 2, 4, 6, 3], np.int32), np.array([-1, -1, 0, 0, 1, 2], np.int32))
    assert bfs.tokens[bfs.depth_first_order()].tolist() == [1, 2, 3, 4, 5, 6]


def test_prefix_depth_counts_the_leading_tokens_that_are_a_path_of_the_tree():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 4], [5, 6]])
    assert tree.prefix_depth([1, 4, 9]) == 2
    assert tree.prefix_depth([1, 2, 3, 7]) == 3
    assert tree.prefix_depth([5, 2]) == 1  # 2 hangs under 1, not under 5
    assert tree.prefix_depth([9]) == 0
    assert tree.prefix_depth([]) == 0

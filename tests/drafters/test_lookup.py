"""Prompt lookup: the continuation of the earliest match of the longest suffix."""

from __future__ import annotations

import numpy as np

from localspec.drafters.lookup import PromptLookupDrafter


def test_drafts_what_followed_the_earliest_match_of_the_longest_suffix():
    history = np.array([1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 2, 3, 4])
    tree = PromptLookupDrafter().propose(history, 4)
    assert tree.tokens.tolist() == [5, 9, 2, 3]
    assert tree.parents.tolist() == [-1, 0, 1, 2]
    assert tree.source == "lookup:3"  # the budget learns each match length apart


def test_falls_back_to_shorter_ngrams_and_respects_the_budget():
    history = np.array([8, 1, 5, 6, 7, 0, 1])
    tree = PromptLookupDrafter().propose(history, 2)
    assert tree.tokens.tolist() == [5, 6] and tree.source == "lookup:1"


def test_no_match_gives_an_empty_tree():
    assert len(PromptLookupDrafter().propose(np.array([1, 2, 3]), 8)) == 0
    assert len(PromptLookupDrafter().propose(np.array([4]), 8)) == 0


def test_continuation_may_run_up_to_the_last_token():
    history = np.array([1, 2, 1, 2, 1])
    assert PromptLookupDrafter().propose(history, 8).tokens.tolist() == [2, 1]

"""Prompt lookup (PLD): find the last n tokens earlier in the context, draft what followed."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from localspec.drafters.base import with_match
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict


class PromptLookupDrafter:
    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        pass

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        """The continuation of the earliest match of the longest suffix (n = max..min).

        The source names the matched length ("lookup:2"), so the budget learns how far a draft
        from a short match is worth verifying apart from one from a long match.
        """
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(history) <= n:
                continue
            windows = sliding_window_view(history[:-1], n)  # matches that have a continuation
            hits = np.flatnonzero((windows == history[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[0]) + n
                return DraftTree.chain(history[start:start + budget].tolist(), with_match(self.name, n))
        return DraftTree.empty(self.name)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        pass

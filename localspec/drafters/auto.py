"""The default drafter: retrieval when the context has a long match, Token Recycling otherwise,
fused into one tree (RASD-style longest-prefix merge) so the verifier checks both at once.

The fused tree's source names the regime ("auto:retrieval" or "auto:recycling"), so the budget
learns acceptance per regime. Recycling observes every verified row, whoever drafted it.
"""

from __future__ import annotations

import numpy as np

from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.drafters.retrieval import SuffixAutomatonDrafter
from localspec.tree import DraftTree
from localspec.verify import Verdict


class AutoDrafter:
    name = "auto"

    def __init__(self, min_match: int = 5, extra: list | None = None) -> None:
        self.min_match = min_match
        self.retrieval = SuffixAutomatonDrafter()
        self.recycling = TokenRecyclingDrafter()
        self.extra = list(extra or [])  # e.g. a DatastoreDrafter from `--index`

    def begin(self, prompt: np.ndarray) -> None:
        for drafter in (self.retrieval, self.recycling, *self.extra):
            drafter.begin(prompt)

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        retrieved = self.retrieval.propose(history, budget)
        recycled = self.recycling.propose(history, budget)
        extras = [d.propose(history, budget) for d in self.extra]
        if self.retrieval.match_length >= self.min_match and len(retrieved):
            ordered, regime = [retrieved, *extras, recycled], "retrieval"
        else:
            ordered, regime = [recycled, *extras, retrieved], "recycling"
        return DraftTree.merge([t for t in ordered if len(t)], f"auto:{regime}").truncated(budget)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        self.recycling.observe(tree, logits, verdict)

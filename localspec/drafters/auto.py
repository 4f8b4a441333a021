"""The default drafter: retrieval when the context has a long match, Token Recycling otherwise,
fused into one tree (RASD-style longest-prefix merge) so the verifier checks both at once.

The fused tree's source names the regime and the match length ("auto:recycling:2",
"auto:retrieval:8"), so the budget learns acceptance for each apart: a chain copied after a
16-token match is accepted far more often than one after a 5-token match. Recycling observes
every verified row, whoever drafted it.
"""

from __future__ import annotations

import numpy as np

from localspec.drafters.base import with_match
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.drafters.retrieval import SuffixAutomatonDrafter
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

MATCH_BUCKETS = (0, 1, 2, 3, 4, 5, 8, 16)  # a source label per bucket: 5 = 5 to 7, and so on


def match_bucket(match_length: int) -> int:
    return max(b for b in MATCH_BUCKETS if b <= match_length)


class AutoDrafter:
    name = "auto"

    def __init__(self, min_match: int = 5, extra: list | None = None) -> None:
        self.min_match = min_match
        self.retrieval = SuffixAutomatonDrafter()
        self.recycling = TokenRecyclingDrafter()
        self.extra = list(extra or [])  # e.g. a DatastoreDrafter from `--index`

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        for drafter in (self.retrieval, self.recycling, *self.extra):
            drafter.begin(prompt, noise)

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        retrieved = self.retrieval.propose(history, budget)
        recycled = self.recycling.propose(history, budget)
        extras = [d.propose(history, budget) for d in self.extra]
        match = self.retrieval.match_length
        if match >= self.min_match and len(retrieved):
            ordered, regime = [retrieved, *extras, recycled], "retrieval"
        else:
            ordered, regime = [recycled, *extras, retrieved], "recycling"
        source = with_match(f"auto:{regime}", match_bucket(match))
        return DraftTree.merge([t for t in ordered if len(t)], source).truncated(budget)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        self.recycling.observe(tree, logits, verdict)

"""The default drafter: retrieval when the context has a long match, Token Recycling otherwise,
fused into one tree (RASD-style longest-prefix merge) so the verifier checks both at once.

The fused tree's source names the regime and the match length ("auto:retrieval:8"), and for
recycling trees the length of the context whose row drafted the root's children
("auto:recycling:2c3"), so the budget learns acceptance for each apart: a chain copied after a
16-token match is accepted far more often than one after a 5-token match, and a guess learnt
after the same three tokens more often than one learnt after the same token. Recycling
observes every verified row, whoever drafted it.

Proposals are sized by what gets verified: where the engine's budget has kept few nodes of
recent trees of a source (on a CPU, often one or two), drafting sixteen only costs time, so
auto drafts twice the most it kept of the last few, plus two (the budget looks that far past
its choice now and then).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from localspec.drafters.base import with_match
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.drafters.retrieval import SuffixAutomatonDrafter
from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

MATCH_BUCKETS = (0, 1, 2, 3, 4, 5, 8, 16)  # a source label per bucket: 5 = 5 to 7, and so on
SIZES_KEPT = 16  # verified tree sizes remembered per source


def match_bucket(match_length: int) -> int:
    return max(b for b in MATCH_BUCKETS if b <= match_length)


class AutoDrafter:
    name = "auto"

    def __init__(self, min_match: int = 5, extra: list | None = None) -> None:
        self.min_match = min_match
        self.retrieval = SuffixAutomatonDrafter()
        self.recycling = TokenRecyclingDrafter()
        self.extra = list(extra or [])  # e.g. a DatastoreDrafter from `--index`
        self.verified: dict[str, deque[int]] = {}  # source -> nodes verified of its last trees

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        for drafter in (self.retrieval, self.recycling, *self.extra):
            drafter.begin(prompt, noise)

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        retrieved = self.retrieval.propose(history, budget)
        match = self.retrieval.match_length
        if match >= self.min_match and len(retrieved):
            regime, source = "retrieval", with_match("auto:retrieval", match_bucket(match))
        else:  # the recycling tree's value depends on the context its first row was learnt in
            regime = "recycling"
            source = with_match("auto:recycling", match_bucket(match), self.recycling.root_context(history))
        size = self.proposal_size(source, budget)
        recycled = self.recycling.propose(history, size)
        extras = [d.propose(history, size) for d in self.extra]
        ordered = [retrieved, *extras, recycled] if regime == "retrieval" else [recycled, *extras, retrieved]
        return DraftTree.merge([t for t in ordered if len(t)], source).truncated(size)

    def proposal_size(self, source: str, budget: int) -> int:
        """Nodes worth drafting for `source`: the whole budget until trees of it were verified."""
        kept = self.verified.get(source)
        return min(budget, 2 * max(kept) + 2) if kept else budget

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        self.recycling.observe(tree, logits, verdict)
        self.verified.setdefault(tree.source, deque(maxlen=SIZES_KEPT)).append(len(tree))

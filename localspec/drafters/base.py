"""The drafter lifecycle: begin a request, propose a tree under a budget, observe the verdict.

Drafters never touch the target's KV cache; the engine owns batches and trimming.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from localspec.sampling import GumbelNoise
from localspec.tree import DraftTree
from localspec.verify import Verdict

_MATCH = re.compile(r"\d+(c\d+)?")


def with_match(label: str, match_length: int, context_length: int | None = None) -> str:
    """A draft's source naming the length of the context match it came from ("retrieval:4"),
    and for recycling the length of the context whose row drafted it ("recycling:2c3"): the
    budget learns acceptance per source, and a draft from more context deserves more nodes."""
    return f"{label}:{match_length}" + ("" if context_length is None else f"c{context_length}")


def without_match(source: str) -> str:
    """The source without its match length: "auto:recycling:2c3" -> "auto:recycling"."""
    head, _, tail = source.rpartition(":")
    return head if head and _MATCH.fullmatch(tail) else source


class Drafter(Protocol):
    name: str

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        """A new request starts; `prompt` is every token before generation. `noise` is the
        sampler's (None when greedy): with it a drafter can guess the token that will be sampled
        at each position, not only the likeliest one."""

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        """At most `budget` nodes continuing `history` (prompt + generated, pending token last)."""

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        """The verify result of the last proposal: the tree, its logits rows, what was accepted."""


class NoDrafter:
    """Plain decoding: propose nothing, so each step verifies only the pending token."""

    name = "none"

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        pass

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        return DraftTree.empty(self.name)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        pass


class FusedDrafter:
    """Several drafters verified as one tree: their proposals merged by longest shared prefix,
    earlier drafters first, so a budget cut drops the later ones' nodes."""

    def __init__(self, name: str, parts: list[Drafter]) -> None:
        self.name = name
        self.parts = parts

    def begin(self, prompt: np.ndarray, noise: GumbelNoise | None = None) -> None:
        for part in self.parts:
            part.begin(prompt, noise)

    def propose(self, history: np.ndarray, budget: int) -> DraftTree:
        trees = [t for t in (part.propose(history, budget) for part in self.parts) if len(t)]
        return DraftTree.merge(trees, self.name).truncated(budget)

    def observe(self, tree: DraftTree, logits: np.ndarray, verdict: Verdict) -> None:
        for part in self.parts:
            part.observe(tree, logits, verdict)

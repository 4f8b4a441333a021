"""Token Recycling's matrix primed from the model itself, before any generation has taught it.

A cold matrix knows no successors, so after a token the run has not met yet nothing is drafted.
Priming asks the model for every such token's top-k successors in a few verify batches: each
batch holds the start token as root and up to `max_tree_paths` tokens as its children, so a
child's row is the model's guess right after [start, child]. That context is shorter than real
ones, so generation overwrites these rows as it learns; priming only fills rows still unknown.
Lowest ids go first: byte-level BPE and SentencePiece vocabularies number their common pieces
first, so a deadline leaves out the rarest tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from localspec.backends.base import Backend
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.tree import DraftTree


def prime_recycling(backend: Backend, drafter: TokenRecyclingDrafter, deadline_s: float | None = None,
                    on_batch: Callable[[int, int], None] | None = None) -> int:
    """Fill the drafter's unknown rows from the model; returns how many were filled.

    Leaves the backend's cache empty. Stops before a batch that would start after `deadline_s`.
    """
    todo = drafter.unknown_tokens(backend.n_vocab)
    width = max(1, min(backend.max_tree_paths, getattr(backend, "n_batch", 512) - 1, backend.n_ctx - 2))
    root = backend.bos_token if backend.bos_token >= 0 else backend.eos_token
    start = time.perf_counter()
    filled = 0
    backend.truncate(0)
    for first in range(0, len(todo), width):
        if deadline_s is not None and time.perf_counter() - start >= deadline_s:
            break
        tokens = todo[first:first + width].astype(np.int32)
        star = DraftTree(tokens, np.full(len(tokens), -1, np.int32), "prime")
        logits = backend.verify(root, star)
        drafter.learn(tokens, logits[1:1 + len(tokens)])
        backend.commit(root, star, [])
        backend.truncate(0)
        filled += len(tokens)
        if on_batch is not None:
            on_batch(filled, len(todo))
    return filled

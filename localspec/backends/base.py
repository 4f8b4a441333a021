"""The interface every backend offers the engine."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from localspec.tree import DraftTree


class Backend(Protocol):
    """A model plus one KV sequence holding `tokens`; trees are verified in branch sequences.

    Contract of one speculation round: `verify(root, tree)` decodes the pending token and every
    tree node in one batch and returns their logits (row 0 = root, row i + 1 = node i, valid until
    the next call); `commit(root, tree, accepted)` keeps only root + accepted nodes in the cache.
    """

    n_ctx: int
    n_vocab: int
    supports_trees: bool
    max_tree_paths: int
    chat_template: str | None
    bos_token: int
    eos_token: int

    @property
    def tokens(self) -> list[int]: ...

    @property
    def n_cached(self) -> int:
        """How many of `tokens` are in the KV cache; the rest join the front of the next verify."""
        ...

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False
                 ) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def special_token_text(self, token: int) -> str: ...

    def is_eog(self, token: int) -> bool: ...

    def truncate(self, n_keep: int) -> None: ...

    def prefill(self, tokens: list[int]) -> None: ...

    def verify(self, root: int, tree: DraftTree) -> np.ndarray: ...

    def commit(self, root: int, tree: DraftTree, accepted: list[int]) -> None: ...

    def close(self) -> None: ...

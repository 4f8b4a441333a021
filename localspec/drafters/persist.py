"""Token Recycling's matrix kept on disk per model, so a new run starts from what earlier runs learnt.

Losing or corrupting the file only costs speed (drafts are verified), so reading it never fails
a run: a bad file is ignored and replaced on the next save.
"""

from __future__ import annotations

import os
from pathlib import Path

from localspec.budget import model_fingerprint
from localspec.drafters.base import Drafter
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.paths import cache_dir, make_dir


def recycling_part(drafter: Drafter) -> TokenRecyclingDrafter | None:
    """The Token Recycling drafter inside `drafter` (itself, or the one `auto` holds)."""
    if isinstance(drafter, TokenRecyclingDrafter):
        return drafter
    part = getattr(drafter, "recycling", None)
    return part if isinstance(part, TokenRecyclingDrafter) else None


def learned_path(model_path: str | Path, k: int) -> Path:
    return cache_dir() / "recycling" / f"{model_fingerprint(model_path)}-k{k}.npz"


def restore_learned(drafter: Drafter, model_path: str | Path, n_vocab: int) -> bool:
    """Load the saved matrix into the drafter's recycling part; True when something was loaded."""
    part = recycling_part(drafter)
    if part is None:
        return False
    path = learned_path(model_path, part.k)
    if not path.is_file():
        return False
    try:
        fresh = TokenRecyclingDrafter(n_vocab=n_vocab, k=part.k)
        fresh.load(path)
    except (OSError, ValueError, KeyError):
        return False
    part.adopt(fresh)
    return True


def save_learned(drafter: Drafter, model_path: str | Path) -> bool:
    """Write the recycling matrix (atomically); False when there is nothing learnt to write."""
    part = recycling_part(drafter)
    if part is None or part.adj is None:
        return False
    path = learned_path(model_path, part.k)
    make_dir(path.parent)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    part.save(partial)
    partial.replace(path)
    return True

"""Drafters propose draft trees for the target to verify."""

from __future__ import annotations

from localspec.drafters.auto import AutoDrafter
from localspec.drafters.base import Drafter, NoDrafter
from localspec.drafters.lookup import PromptLookupDrafter
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.drafters.retrieval import SuffixAutomatonDrafter
from localspec.errors import InvalidSettingsError

DRAFTERS = {"none": NoDrafter, "lookup": PromptLookupDrafter, "recycling": TokenRecyclingDrafter,
            "retrieval": SuffixAutomatonDrafter, "auto": AutoDrafter}


def make_drafter(name: str) -> Drafter:
    try:
        return DRAFTERS[name]()
    except KeyError:
        raise InvalidSettingsError(
            f"unknown drafter {name!r}; choose one of: {', '.join(DRAFTERS)}") from None

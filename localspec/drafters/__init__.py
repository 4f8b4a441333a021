"""Drafters propose draft trees for the target to verify."""

from __future__ import annotations

from localspec.datastore import Datastore, DatastoreDrafter
from localspec.drafters.auto import AutoDrafter
from localspec.drafters.base import Drafter, FusedDrafter, NoDrafter
from localspec.drafters.lookup import PromptLookupDrafter
from localspec.drafters.recycling import TokenRecyclingDrafter
from localspec.drafters.retrieval import SuffixAutomatonDrafter
from localspec.errors import InvalidSettingsError

DRAFTERS = {"none": NoDrafter, "lookup": PromptLookupDrafter, "recycling": TokenRecyclingDrafter,
            "retrieval": SuffixAutomatonDrafter, "auto": AutoDrafter}
TORCH_DRAFTERS = ("layerskip", "polybasic")  # they run the model: made by the torch backend's factory
INDEXED_DRAFTERS = ("auto", "retrieval")  # they draft from a datastore too, given one (`--index`)


def make_drafter(name: str, datastore: Datastore | None = None) -> Drafter:
    """A fresh drafter by name; a datastore (from `--index`) joins the retrieval-based ones."""
    if name not in DRAFTERS:
        raise InvalidSettingsError(f"unknown drafter {name!r}; choose one of: {', '.join(DRAFTERS)}")
    if datastore is not None and name == "auto":
        return AutoDrafter(extra=[DatastoreDrafter(datastore)])
    if datastore is not None and name == "retrieval":
        return FusedDrafter("retrieval", [SuffixAutomatonDrafter(), DatastoreDrafter(datastore)])
    return DRAFTERS[name]()

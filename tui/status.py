"""What the status bar says: pure formatting of speed, drafting, memory and context."""

from __future__ import annotations

from dataclasses import dataclass

from localspec.drafters.base import without_match
from tui.chatmodel import LiveStats


@dataclass(frozen=True)
class MemoryUse:
    rss: int
    budget: int
    budget_label: str  # what the budget is: "budget" (the plan's) or "RAM"


def process_memory(budget: int | None = None) -> MemoryUse:
    """This process's resident memory against the plan's budget, else against total RAM."""
    import psutil

    rss = psutil.Process().memory_info().rss
    if budget:
        return MemoryUse(rss, budget, "budget")
    return MemoryUse(rss, psutil.virtual_memory().total, "RAM")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def drafter_summary(by_source: dict[str, int]) -> str:
    """Which drafters produced accepted tokens, the most productive first."""
    if not by_source:
        return "none accepted"
    totals: dict[str, int] = {}
    for source, count in by_source.items():  # "auto:recycling:2" -> "recycling"
        name = without_match(source).rsplit(":", 1)[-1]
        totals[name] = totals.get(name, 0) + count
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count}" for name, count in ranked)


@dataclass(frozen=True)
class StatusInfo:
    state: str = "loading model"
    stats: LiveStats | None = None
    memory: MemoryUse | None = None
    context_used: int = 0
    n_ctx: int = 0

    def speed(self) -> str:
        if self.stats is None or not self.stats.steps:
            return ""
        return (f"{self.stats.tokens_per_s:.0f} tok/s │ {self.stats.mean_accepted:.2f} tok/step │ "
                f"drafts: {drafter_summary(self.stats.by_source)}")

    def resources(self) -> str:
        parts = []
        if self.memory is not None:
            parts.append(f"mem {human_bytes(self.memory.rss)}/{human_bytes(self.memory.budget)} "
                         f"{self.memory.budget_label}")
        if self.n_ctx:
            parts.append(f"ctx {self.context_used}/{self.n_ctx}")
        return " │ ".join(parts)

    def text(self) -> str:
        return " │ ".join(part for part in (self.state, self.speed(), self.resources()) if part)

"""The speculation details: tokens per verify step as a sparkline, and the counters behind it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Label, Sparkline, Static

from tui.chatmodel import LiveStats
from tui.status import drafter_summary

SPARK_STEPS = 120  # the most recent steps shown


def describe(stats: LiveStats) -> str:
    if not stats.steps:
        return "No answer yet: speculation statistics appear while the model writes."
    rate = stats.accepted_tokens / stats.draft_tokens if stats.draft_tokens else 0.0
    return (f"{stats.tokens} tokens in {stats.steps} steps ({stats.mean_accepted:.2f} per step, "
            f"longest {max(stats.step_tokens, default=0)})  ·  drafted {stats.draft_tokens}, "
            f"accepted {stats.accepted_tokens} ({rate:.0%})  ·  {drafter_summary(stats.by_source)}  ·  "
            f"prompt {stats.prompt_tokens} tokens, {stats.reused_tokens} reused from the KV cache")


class DetailsPanel(Vertical):
    stats: reactive[LiveStats] = reactive(LiveStats, always_update=True)

    def compose(self) -> ComposeResult:
        yield Label("Tokens per verify step (1 = no draft accepted)", classes="title")
        yield Sparkline([], summary_function=max)
        yield Static(describe(LiveStats()), id="details-text")

    def watch_stats(self, stats: LiveStats) -> None:
        self.query_one(Sparkline).data = list(stats.step_tokens[-SPARK_STEPS:])
        self.query_one("#details-text", Static).update(describe(stats))

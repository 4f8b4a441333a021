"""The conversation's settings: system prompt, sampling and drafting."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

from localspec.drafters import DRAFTERS
from localspec.errors import InvalidSettingsError
from tui.options import ChatSettings

# (field, label, parse) for the numeric inputs, in display order
NUMBER_FIELDS = [
    ("max_tokens", "Max tokens", int),
    ("temperature", "Temperature (0 = greedy)", float),
    ("top_p", "Top-p", float),
    ("top_k", "Top-k (0 = off)", int),
    ("min_p", "Min-p", float),
    ("repeat_penalty", "Repeat penalty", float),
    ("seed", "Seed (empty = random)", int),
]


class SettingsScreen(ModalScreen[ChatSettings | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="settings"):
            yield Label("Conversation settings", classes="dialog-title")
            yield Label("System prompt")
            yield TextArea(self.settings.system_prompt, id="system_prompt", soft_wrap=True)
            with Grid(id="numbers"):
                for name, label, _ in NUMBER_FIELDS:
                    value = getattr(self.settings, name)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=name, type="number")
                yield Label("Drafter")
                yield Select([(name, name) for name in DRAFTERS], value=self.settings.drafter,
                             allow_blank=False, id="drafter")
            yield Label("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def read(self) -> ChatSettings:
        values: dict = {"system_prompt": self.query_one("#system_prompt", TextArea).text,
                        "drafter": self.query_one("#drafter", Select).value}
        for name, label, parse in NUMBER_FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            if name == "seed" and not raw:
                values[name] = None
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                raise InvalidSettingsError(f"{label}: {raw!r} is not a valid number") from None
        return ChatSettings(**values)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        try:
            self.dismiss(self.read())
        except InvalidSettingsError as exc:
            self.query_one("#error", Label).update(str(exc))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

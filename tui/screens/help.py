"""Every key of the app in one list."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

ABOUT = ("Answers are drafted by train-free speculation and checked by the model itself, so they are "
         "exactly what plain decoding would write. Click a code block to copy it.")


def key_table(keys: list[tuple[str, str]]) -> Text:
    width = max(len(key) for key, _ in keys) + 3
    text = Text()
    for i, (key, what) in enumerate(keys):
        text.append(("\n" if i else "") + key.ljust(width), style="bold")
        text.append(what)
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="help"):
            yield Label("localspec chat: keys", classes="dialog-title")
            yield Static(key_table(self.keys), id="keys")
            yield Static(ABOUT, classes="hint")
            yield Label("Esc closes this screen", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)

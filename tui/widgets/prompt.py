"""The prompt: Enter sends, Shift+Enter or Ctrl+J breaks the line, Up/Down walk earlier prompts."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea


def has_visible_text(text: str) -> bool:
    """False for a prompt of only spaces, controls and invisible format characters (ZWSP, BOM...)."""
    return any(not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf") for c in text)


class PromptInput(TextArea):
    @dataclass
    class Submitted(Message):
        text: str

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)
        self._sent: list[str] = []
        self._recall: int | None = None  # index into _sent while walking it
        self._draft = ""  # what was typed before walking started

    def remember(self, prompts: list[str]) -> None:
        """Prompts Up can recall, oldest first (the current conversation's)."""
        self._sent = list(prompts)
        self._recall = None

    def restore(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)
        self.focus()

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if has_visible_text(self.text):
                self.post_message(self.Submitted(self.text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def clear_sent(self, text: str) -> None:
        """The prompt was sent: empty the input and remember the prompt."""
        self._sent.append(text)
        self._recall = None
        self.clear()

    def action_cursor_up(self, select: bool = False) -> None:
        if select or self.cursor_location[0] > 0 or not self._sent:
            super().action_cursor_up(select)
            return
        if self._recall is None:
            self._draft, self._recall = self.text, len(self._sent)
        self._recall = max(0, self._recall - 1)
        self._show(self._sent[self._recall])

    def action_cursor_down(self, select: bool = False) -> None:
        last_row = self.document.line_count - 1
        if select or self._recall is None or self.cursor_location[0] < last_row:
            super().action_cursor_down(select)
            return
        self._recall += 1
        if self._recall >= len(self._sent):
            self._recall = None
            self._show(self._draft)
        else:
            self._show(self._sent[self._recall])

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

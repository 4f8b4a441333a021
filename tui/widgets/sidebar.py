"""The conversation list: select to switch, r to rename, Delete to delete."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option, OptionDoesNotExist

from tui.history import Conversation

TITLE_WIDTH = 24  # the sidebar's width less its padding: one line per conversation


def shorten(title: str) -> str:
    title = " ".join(title.split())
    return title if len(title) <= TITLE_WIDTH else title[:TITLE_WIDTH - 1] + "…"


class ConversationList(OptionList):
    BINDINGS = [
        Binding("r", "rename", "Rename"),
        Binding("delete,d", "delete", "Delete"),
    ]

    @dataclass
    class Rename(Message):
        conversation_id: int

    @dataclass
    class Delete(Message):
        conversation_id: int

    def show(self, conversations: list[Conversation], current: int | None) -> None:
        self.clear_options()
        self.add_options([Option(Text(shorten(c.title)), id=str(c.id)) for c in conversations])
        if current is not None:
            self.highlight_conversation(current)

    def highlight_conversation(self, conversation_id: int) -> None:
        try:
            self.highlighted = self.get_option_index(str(conversation_id))
        except OptionDoesNotExist:
            self.highlighted = None

    def _highlighted_id(self) -> int | None:
        if self.highlighted is None:
            return None
        option = self.get_option_at_index(self.highlighted)
        return int(option.id) if option.id else None

    def action_rename(self) -> None:
        if (cid := self._highlighted_id()) is not None:
            self.post_message(self.Rename(cid))

    def action_delete(self) -> None:
        if (cid := self._highlighted_id()) is not None:
            self.post_message(self.Delete(cid))

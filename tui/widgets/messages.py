"""The conversation view: one MessageView per message, the streaming answer written through
Textual's MarkdownStream (which batches fragments that arrive faster than it can render)."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Markdown, Static
from textual.widgets._markdown import MarkdownFence, MarkdownStream

from tui.history import ROLE_TITLES


class CodeFence(MarkdownFence):
    """A highlighted code block; clicking it copies the code to the clipboard."""

    def on_mount(self) -> None:
        self.tooltip = "Click to copy"

    def on_click(self, event: events.Click) -> None:
        event.stop()
        self.app.copy_to_clipboard(self.code)
        self.notify("Code copied to the clipboard", timeout=2)


class ChatMarkdown(Markdown):
    BLOCKS = {**Markdown.BLOCKS, "fence": CodeFence, "code_block": CodeFence}


class MessageView(Vertical):
    def __init__(self, role: str, content: str = "", message_id: int | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.content = content
        self.message_id = message_id
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(ROLE_TITLES.get(self.role, self.role), classes="role")
        yield ChatMarkdown(self.content)

    @property
    def markdown(self) -> ChatMarkdown:
        return self.query_one(ChatMarkdown)

    def start_stream(self) -> None:
        self.add_class("streaming")
        self._stream = Markdown.get_stream(self.markdown)

    async def write(self, fragment: str) -> None:
        self.content += fragment
        if self._stream is not None:
            await self._stream.write(fragment)

    async def finish(self, text: str) -> None:
        """End the stream and render the whole answer once, so no fragment can be missing."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.remove_class("streaming")
        self.content = text
        await self.markdown.update(text)

    def code_blocks(self) -> list[str]:
        return [fence.code for fence in self.query(CodeFence)]


class ChatLog(VerticalScroll):
    """Messages, oldest at the top. Anchored while streaming: follows the answer only while the
    user stays at the bottom (scrolling up releases it, scrolling back down re-engages it)."""

    def compose(self) -> ComposeResult:
        yield Static("Type a message and press Enter.  F1 shows every key.", id="welcome")

    async def show(self, messages: list[tuple[str, str, int | None]]) -> None:
        """Replace the view with (role, content, message id) triples."""
        await self.query(MessageView).remove()
        await self.mount_all([MessageView(role, content, mid) for role, content, mid in messages])
        self._update_empty()
        self.anchor()  # the Markdown renders after mounting: stay at the bottom while it grows

    async def add(self, role: str, content: str = "", message_id: int | None = None) -> MessageView:
        view = MessageView(role, content, message_id)
        await self.mount(view)
        self._update_empty()
        return view

    async def remove_view(self, view: MessageView) -> None:
        await view.remove()
        self._update_empty()

    @property
    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def last_code_block(self) -> str | None:
        for view in reversed(self.views):
            blocks = view.code_blocks()
            if blocks:
                return blocks[-1]
        return None

    def _update_empty(self) -> None:
        self.set_class(not self.query(MessageView), "empty")

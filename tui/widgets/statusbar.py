"""One line of live numbers under the prompt: state, speed and drafting, memory and context.

Speed gives way first (ellipsis) when the terminal is narrow; state and resources stay whole.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Label

from tui.status import StatusInfo


class StatusBar(Horizontal):
    info: reactive[StatusInfo] = reactive(StatusInfo, always_update=True)

    def compose(self) -> ComposeResult:
        yield Label(id="state")
        yield Label(id="speed")
        yield Label(id="resources")

    def watch_info(self, info: StatusInfo) -> None:
        self.query_one("#state", Label).update(info.state)
        self.query_one("#speed", Label).update(info.speed())
        self.query_one("#resources", Label).update(info.resources())

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
        # every label still there: the app's memory timer can fire once more while they are removed
        texts = {"state": info.state, "speed": info.speed(), "resources": info.resources()}
        for label in self.query(Label):
            label.update(texts[label.id])

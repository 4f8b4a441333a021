"""Token bytes -> text safely: UTF-8 characters split across tokens, and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopMatcher:
    """Holds back text that could be the start of a stop string, and cuts at the first match."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to show now. After a stop string is seen, nothing more is ever returned."""
        if self.stopped:
            return ""
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buffer[: min(hits)]
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(buffer)), 0, -1)
                    if buffer.endswith(s[:k])), default=0)
        self._pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """At the end of generation a held-back partial match is ordinary text."""
        text, self._pending = ("" if self.stopped else self._pending), ""
        return text


class TextStream:
    """Incremental detokenizer: bytes in, complete characters out, stop strings removed."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def feed(self, data: bytes) -> str:
        return self._stops.feed(self._decoder.decode(data))

    def flush(self) -> str:
        return self._stops.feed(self._decoder.decode(b"", final=True)) + self._stops.flush()

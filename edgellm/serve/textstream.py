"""Token bytes in, reply text out: UTF-8 characters split over tokens are joined, and stop strings end the
reply without appearing in it. Text that could be the start of a stop string is held back until the next
token shows whether it is."""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: tuple[str, ...] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = stops
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the reply, once one has

    def push(self, data: bytes) -> tuple[str, bool]:
        """The text that can be sent now, and whether a stop string ended the reply."""
        text = self._held + self._utf8.decode(data)
        if not self._stops:
            return text, False
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            at = min(hits)
            self.matched = next(s for s in self._stops if text.find(s) == at)
            return text[:at], True
        keep = self._stop_prefix_len(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """What is still held back, when the reply ends for another reason."""
        text = self._held + self._utf8.decode(b"", final=True)
        self._held = ""
        return text

    def _stop_prefix_len(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        for n in range(min(len(text), max(map(len, self._stops)) - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0

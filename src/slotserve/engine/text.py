"""Turning generated token pieces into text a client may see: whole UTF-8 characters, stop strings cut.

A token can end in the middle of a multi-byte character, and the start of a stop string can arrive
before the rest of it; neither may be sent early. This mirrors what llama-server streams.
"""
from __future__ import annotations


def complete_utf8_len(data: bytes) -> int:
    """Length of the longest prefix of data that does not end inside a multi-byte UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte & 0x80 == 0:
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return len(data) if back >= need else len(data) - back
    return len(data)


def partial_stop_len(text: str, stops: list[str]) -> int:
    """Longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextAssembler:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.stopping_word = ""
        self._pending = b""  # bytes of an unfinished UTF-8 character
        self._sent = 0  # characters of self.text already handed out

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that became safe to send (may be empty)."""
        data = self._pending + piece
        cut = complete_utf8_len(data)
        self._pending = data[cut:]
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += data[:cut].decode("utf-8", errors="replace")
        hits = [(at, stop) for stop in self.stops if (at := self.text.find(stop, start)) != -1]
        if hits:
            at, self.stopping_word = min(hits)
            self.text = self.text[:at]
        hold = 0 if self.stopping_word else partial_stop_len(self.text, self.stops)
        return self._take(len(self.text) - hold)

    def finish(self) -> str:
        """At the end of generation nothing is held back any more."""
        if self._pending and not self.stopping_word:
            self.text += self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        out, self._sent = self.text[self._sent:upto], upto
        return out

"""A large byte buffer reused by one user at a time, lent out explicitly.

Saves encode into one and restores read into another: fresh pages for a 55 MB slot cost as much as
filling them (on the first restore of the 110M model's 2,048-token slot, 430 ms instead of 45). A
buffer is lent for a `with` block; lending it twice at once is an error, and the view it lent is
released when the block ends, so bytes cannot be used after the buffer is handed on.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class BufferInUse(RuntimeError):
    """A second user asked for a buffer that is still lent out."""


class ScratchBuffer:
    def __init__(self, what: str):
        self.what = what  # named in the error, so a misuse says whose buffer it was
        self._data = bytearray()
        self._lent = False

    def reserve(self, n_bytes: int) -> None:
        """Allocate now rather than at the first use (bytearray zero-fills, so every page is touched here)."""
        if self._lent:
            raise BufferInUse(f"the {self.what} buffer is lent out; it cannot grow now")
        if len(self._data) < n_bytes:
            self._data = bytearray(n_bytes)

    @contextmanager
    def lend(self, n_bytes: int) -> Iterator[memoryview]:
        """A writable view of n_bytes, valid inside the block only."""
        self.reserve(n_bytes)
        self._lent = True
        view = memoryview(self._data)[:n_bytes]
        try:
            yield view
        finally:
            view.release()
            self._lent = False

"""Seeing what other servers sharing a --cache-disk directory wrote: when to list it again, and the
listing itself (run on the disk tier's I/O thread, never the engine's)."""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

from .savedir import SaveDir, SidecarMismatch

RESCAN_EVERY = 0.25  # seconds: the directory is listed at most this often
_MTIME_TICK = 1_000_000_000  # ns: a change this soon after the mtime seen may not have moved it (coarse clocks)
log = logging.getLogger("slotserve.kvcache")


class DirWatch:
    """Whether the directory may hold changes not yet listed: one stat, no listing."""

    def __init__(self, root: Path):
        self.root = root
        self._seen, self._next = self._mtime(), 0.0

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.root).st_mtime_ns
        except OSError:
            return None

    def changed(self) -> bool:
        """True when a listing is due (the caller then lists): the mtime moved since the last, or was so
        recent then that a later change in the same clock tick may not have moved it."""
        now = time.monotonic()
        if now < self._next:
            return False
        mtime = self._mtime()
        settled = mtime is not None and time.time_ns() - mtime > _MTIME_TICK
        if mtime == self._seen and settled:
            return False
        self._seen, self._next = mtime, now + RESCAN_EVERY
        return True


def list_new(savedir: SaveDir, name_re: re.Pattern, read_entry: Callable, known: frozenset,
             skipped: dict) -> tuple[set, list]:
    """The entry names in the directory, and the entries not in `known` read with `read_entry`. A file
    refused is noted in `skipped` and not read again unless it changes; nothing is
    deleted here: a refused file may be another server's write in progress."""
    present, new = set(), []
    with os.scandir(savedir.root) as it:  # names only: a known entry costs no stat (2000 entries: ~10 ms)
        for f in it:
            if name_re.match(f.name) and f.is_file(follow_symlinks=False):
                present.add(f.name)
    for name in present - known:
        try:
            st = os.stat(savedir.root / name, follow_symlinks=False)
        except OSError:  # gone already
            continue
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a file rewritten since is read again
        if skipped.get(name) == stamp:
            continue
        try:
            entry = read_entry(name)
        except (SidecarMismatch, OSError) as exc:
            log.debug("disk cache: not taking %s: %s", name, exc)
            skipped[name] = stamp
            continue
        if entry is not None:
            new.append(entry)
    for name in [k for k in skipped if k not in present]:
        del skipped[name]
    return present, new

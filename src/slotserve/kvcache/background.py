"""Threads for file work that must not slow the slots that generate: they run at a lower CPU priority,
and their heavy steps take turns with the engine's steps (GATE).

A save's checksum and write, a restore's read and checksum, and the disk tier's reads, writes and
copies take the cores for 10-30 ms (110M model, 1,500 tokens); a generating slot's step needs both
cores, and its BLAS threads wait for each other, so a step that shares the cores with that work takes
longer, however low the work's priority: 110M, quiet 2-core machine, a step of 9 ms took 12-20 ms while
another slot was saved and restored (nice 10; a spinning process at nice 10 alone made steps of 50 ms).
So each chunk of that work (a write or read call of 2 MB, a checksum of one, a copy of 1 MB of rows)
waits at GATE while the engine runs a step, and the engine lends the cores back for a share of each
step's time between steps (and wholly while it has nothing to step): a generating slot's steps run
alone, and the file work still moves on every gap. A chunk started just before a step runs into it:
chunks stay around a millisecond. Waiting for the disk (fsync) needs no turn.

Linux gives each thread its own nice value (setpriority on the thread id); elsewhere this does nothing.
Work that a background thread hands on (the disk tier's widening, split over two threads) goes to
background threads too.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

NICE = 10  # CFS weight 110 against 1024 at nice 0: about a tenth of a core while a step wants it
_local = threading.local()


def _lower_priority() -> None:
    _local.background = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the work runs at normal priority
        pass


def in_background() -> bool:
    """Whether the calling thread is one of these."""
    return getattr(_local, "background", False)


def executor(max_workers: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads run at the background priority."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name, initializer=_lower_priority)


TURN_BYTES = 2 << 20  # file bytes one turn reads, writes or checksums: ~0.3 ms of work here
_BETWEEN_CHUNKS = 0.0005  # a lend waits this long for a job's next chunk before it gives the turn back


class Gate:
    """Turns between the engine's steps and background threads' chunks of work.

    Open unless an engine is inside a step (shut); during lend() it is open for background chunks
    whatever else holds it shut. Chunks already running when it shuts finish: a turn is never cut."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shut = 0  # engines inside a step (tests run several in one process)
        self._lending = 0
        self._waiting = 0  # chunks waiting for their turn
        self._running = 0
        self._lend_until = 0.0

    def _is_open(self) -> bool:
        # a lend ends at its deadline even before the engine thread wakes up to end it
        return self._shut == 0 or (self._lending > 0 and time.perf_counter() < self._lend_until)

    @contextmanager
    def turn(self):
        """One chunk of background work: waits while a step runs."""
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()  # a lend() may be waiting for the next chunk
            while not self._is_open():
                self._cond.wait()
            self._waiting -= 1
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @property
    def stepping(self) -> bool:
        """An engine is inside a step or lending between two: slots are generating."""
        return self._shut > 0 or self._lending > 0

    @contextmanager
    def shut(self):
        """A step: background chunks wait until it ends."""
        with self._cond:
            self._shut += 1
        try:
            yield
        finally:
            with self._cond:
                self._shut -= 1
                self._cond.notify_all()

    def lend(self, seconds: float) -> None:
        """Between steps: let background chunks run for up to `seconds`, returning as soon as none wants to."""
        deadline = time.perf_counter() + seconds
        with self._cond:
            if not (self._waiting or self._running):
                return
            self._lending += 1
            self._lend_until = deadline
            self._cond.notify_all()
            try:
                while (left := deadline - time.perf_counter()) > 0:
                    if self._waiting or self._running:
                        self._cond.wait(left)
                    elif not self._cond.wait(min(left, _BETWEEN_CHUNKS)):
                        break  # no next chunk came: the work is done, or waits for the disk
            finally:
                self._lending -= 1


GATE = Gate()


def turn():
    """GATE's turn for a chunk of work on a background thread; nothing on any other thread (the engine's own
    copies, or tests calling directly)."""
    return GATE.turn() if in_background() else nullcontext()

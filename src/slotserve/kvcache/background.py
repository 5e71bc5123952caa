"""Threads for file work that must not slow the slots that generate: they run at a lower CPU priority.

A save's checksum and write, a restore's read and checksum, and the disk tier's reads and writes take
the cores for 10-30 ms (110M model, 1,500 tokens); a generating slot's step needs those cores too, and
its BLAS threads wait for each other, so a step that shares the cores with that work took 3-5x its time
(110M, quiet 2-core machine, worst gap while another slot was saved and restored: 3.9-5.8x the step; at
nice 10: 2.6-3.3x). At a higher nice value the file work yields whenever a step runs and takes the cores
whenever the engine is between steps or idle, so an action alone is as fast as before. (Copies of K/V
rows the engine makes itself, between steps: see engine/actions.py.)

Linux gives each thread its own nice value (setpriority on the thread id); elsewhere this does nothing.
Work that a background thread hands on (the disk tier's widening, split over two threads) goes to
background threads too.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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

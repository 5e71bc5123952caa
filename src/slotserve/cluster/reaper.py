"""What a local Ray instance leaves behind: its raylet's agents (dashboard agent, runtime-env agent) notice
the raylet is gone but do not always exit, and ignore SIGTERM. The processes this one started are listed
before Ray shuts down and those still running afterwards are ended, by pid (Linux's /proc; elsewhere
nothing is done)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), fields[19]


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`: pid -> its start time (to know it again, not a reused pid)."""
    if not PROC.is_dir():
        return {}
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            started[int(entry.name)] = st[1]
    out, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out[child] = started[child]
        todo += children.get(child, [])
    return out


def end_leftovers(before: dict[int, str], grace_s: float = 3.0) -> list[int]:
    """Kill the processes of `before` that still run `grace_s` after Ray's shutdown; returns their pids."""
    deadline = time.monotonic() + grace_s
    left = before
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {pid: t for pid, t in left.items() if (st := _stat(pid)) is not None and st[1] == t}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return list(left)

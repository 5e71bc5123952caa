"""What lets several processes (replicas) share one slot directory: flock leases and turns, and telling
a dead writer's temporary files from a live writer's save in progress.

flock locks belong to an open file description, so two opens conflict even within one process, and
they end when the descriptor closes (a killed process holds none). On NFS, Linux maps them to POSIX
locks the server coordinates between hosts.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .filenames import HOST, LOCK_NAME, is_temp, temp_writer

SHARED, EXCLUSIVE = fcntl.LOCK_SH, fcntl.LOCK_EX
# a temp file this old is a dead save's whoever wrote it (a writer on another host cannot be asked)
STALE_TEMP_AGE = 24 * 3600.0
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def flock(fd: int, kind: int) -> None:
    """flock, retried when interrupted. A blocking lock on a file system without locks is a no-op (one
    process per directory there, as before); a non-blocking one raises, so its caller backs off."""
    while True:
        try:
            fcntl.flock(fd, kind)
            return
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in _NO_LOCKS and not kind & fcntl.LOCK_NB:
                return
            raise


@contextmanager
def turn(root: Path, kind: int):
    """The directory's lock file, SHARED (pair reads) or EXCLUSIVE (a save's renames, a delete)."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if kind != SHARED or e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        yield  # a directory we may not write to: no save can run here to take turns with
        return
    try:
        flock(fd, kind)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clear_dead_temps(root: Path) -> None:
    """Remove the temp files of saves that can never complete: their writer's pid is not alive on this
    host, or they are older than STALE_TEMP_AGE. A live process's save in progress, or its spare, stays
    (this process's own pid counts as alive: another SaveDir here may be saving)."""
    now = time.time()
    for entry in os.scandir(root):
        if not (is_temp(entry.name) and entry.is_file(follow_symlinks=False)):
            continue
        host, pid = temp_writer(entry.name)
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE
            if old or (host in (None, HOST) and not pid_alive(pid)):
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (another user's counts)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: alive, another user's
    return True

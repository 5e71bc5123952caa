"""The slot save directory (``--slot-save-path``): the only code that touches slot files on disk.

Every path is confined to the directory, symlinks included, and only regular files are opened (a
FIFO would block the slot writer thread until a writer appears). A save replaces a file and its sidecar
as one unit: both are written to temporary files first, then renamed, so a failure or a kill at any
step leaves a usable pair (see sidecar.py for how the sidecar covers the moment between the renames).
Files without a sidecar, such as those written by llama-server itself, are accepted as they are.

The file a save replaces is kept as a hidden spare (one per directory) and the next save writes into it
in place: writing into fresh pages and freeing the old file's blocks at the rename cost more than the
copy itself (55 MB on ext4: 40 ms to write and 20-38 ms to rename, against 18 ms and 0.1 ms). A spare
with another link, or anything but a regular file, is never written into. Where the system can, the
new file and the old one swap names in one step (renameat2's exchange), which also spares ext4's
flush of a new file renamed over an old one; elsewhere a hard link keeps the old file first.

Several processes may share the directory (replicas of one server). A reader holds a shared flock on
each file it opens for as long as it reads; a save writes into the spare only when it gets the
exclusive lock at once, so a file another process still reads is never overwritten (a fresh file is
written instead). A save's renames, and a reader's opening of a file with its sidecar, take turns on
the directory's lock file, so a reader never pairs a file with another save's sidecar and two saves
of one name cannot leave one's file beside the other's sidecar. Start-up removes only temporary files
whose writer is provably dead.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import background, sidecar
from .filenames import (
    InvalidFilename, check_slot_name, is_reserved, sidecar_name, temp_name, validate_filename,
)
from .sharing import EXCLUSIVE, SHARED, clear_dead_temps, flock, turn
from .sidecar import SidecarMismatch

__all__ = ["InvalidFilename", "InsufficientStorage", "SaveDir", "SavedFile", "SidecarMismatch", "SlotFileNotFound",
           "UnsafePath", "validate_filename"]  # the names the engine and the API import from here

_CHUNK = background.TURN_BYTES  # bytes per write call
# The first write is this short, so that no later one starts on a page boundary. Writes of 256 KB and
# more that start page-aligned make the kernel fill a new file's page cache with large folios, and on
# a VM whose balloon reports free memory to the hypervisor (free page reporting, as on this machine)
# those cost the most: 55 MB of a new file took 120-210 ms, and the same writes starting mid-page
# 10-14 ms while memory freed in the last seconds lasted, 84-112 ms after (in C as in Python;
# llama-server's first write is its 12-byte header). Writes into pages a file already has, as into
# the spare, are unaffected.
_LEAD = 12


def _write_spans(size: int) -> list[tuple[int, int]]:
    """(start, end) of each write call for a file of `size` bytes."""
    if size <= _LEAD:
        return [(0, size)] if size else []
    return [(0, _LEAD)] + [(at, min(at + _CHUNK, size)) for at in range(_LEAD, size, _CHUNK)]
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_REOPENS = 8  # a file replaced between its open and its lease: try the name again this many times


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the files at two names atomically (Linux renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs, tmpfs);
    False where the system or file system cannot. Renaming a new file over an existing one makes ext4
    write the new file's data out first (auto_da_alloc, for programs that never fsync): 14-35 ms for a
    55 MB file written without a spare, where the exchange takes 0.1 ms. A save that is to be durable has
    fsynced the file before this; one that is not gives up exactly that flush."""
    rename2 = getattr(_libc, "renameat2", None)
    if rename2 is None:
        return False
    if rename2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOENT):
        return False  # not supported here (or the old file went meanwhile): the plain rename does it
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _is_regular(path: Path) -> bool:
    """A regular file is there (an exchange would swap a directory or a symlink in as well; a rename onto
    those fails, or replaces the link itself)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class UnsafePath(InvalidFilename):
    """The name is well formed but its path would leave the save directory (e.g. a planted symlink)."""


class SlotFileNotFound(FileNotFoundError):
    """No saved slot file has this name."""


class InsufficientStorage(OSError):
    """The save directory's file system is full (or over quota); the previous file is kept."""


@dataclass(frozen=True)
class SavedFile:
    name: str
    size: int
    mtime: float
    has_sidecar: bool


class SaveDir:
    def __init__(self, root: Path | str, *, sync: bool = True):
        """sync: fsync each file and the directory before a save returns (llama-server does not). Without
        it a save is still atomic against a killed process, but not against a power loss."""
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self.sync = sync
        self._spare: Path | None = None  # the inode the last save replaced, to be written over by the next
        # Temp files whose writer is provably dead (its pid gone on this host, or a day old) were left by a
        # killed save and would pile up; a live process's save in progress, another server's included, stays.
        clear_dead_temps(self.root)

    # ------------------------------------------------------------------ paths

    def path_for(self, name: str) -> Path:
        """The path of slot file ``name``, refusing anything that could land outside the directory."""
        check_slot_name(name)
        return self._confined(name)

    def _confined(self, name: str) -> Path:
        path = self.root / name
        # a symlink is refused even when it points inside: a slot name must be a plain file here
        if path.is_symlink():
            raise UnsafePath(f"{name!r} is a symbolic link in the save directory; refusing to follow it")
        if Path(os.path.realpath(path)).parent != self.root:
            raise UnsafePath(f"{name!r} resolves outside the save directory")
        return path

    # ------------------------------------------------------------------ reading

    def open_slot(self, name: str) -> tuple[int, int]:
        """An open descriptor of slot file ``name`` and its size; the caller closes it. While it is open,
        no save (of any process) writes into the file."""
        return self._open_leased(self.path_for(name), name)

    def open_pair(self, name: str) -> tuple[dict | None, int, int]:
        """read_sidecar and open_slot as one step no save's renames come between: (sidecar, fd, size)."""
        with self.turn(SHARED):
            meta = self.read_sidecar(name)
            fd, size = self.open_slot(name)
        return meta, fd, size

    def _open_regular(self, path: Path, name: str) -> tuple[int, int]:
        try:
            st = os.lstat(path)  # a FIFO or device is refused before any open could block on it
        except FileNotFoundError:
            raise SlotFileNotFound(f"no saved slot file named {name!r}") from None
        self._check_regular(st, name)
        try:
            # O_NOFOLLOW closes the gap between the checks and the open; O_NONBLOCK keeps a FIFO
            # swapped in meanwhile from blocking (regular files ignore it)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SlotFileNotFound(f"no saved slot file named {name!r}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(f"{name!r} is a symbolic link in the save directory; refusing to follow it") from None
            raise
        try:
            st = os.fstat(fd)
            self._check_regular(st, name)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def _open_leased(self, path: Path, name: str) -> tuple[int, int]:
        """_open_regular holding a shared flock (the lease a save's spare check respects) on a file the
        name still gives after the lock is taken: the inode opened may have become a spare meanwhile."""
        for _ in range(_REOPENS):
            fd, size = self._open_regular(path, name)
            try:
                flock(fd, SHARED)  # waits only while a save writes into this inode
                st = os.fstat(fd)
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd, st.st_size
            os.close(fd)  # replaced since the open: the name now gives a newer file
        raise SlotFileNotFound(f"slot file {name!r} kept being replaced while it was opened")

    def turn(self, kind: int):
        """The directory's lock file (sharing.turn): saves' renames and pair reads take turns on it."""
        return turn(self.root, kind)

    @staticmethod
    def _check_regular(st: os.stat_result, name: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{name!r} is a symbolic link in the save directory; refusing to follow it")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidFilename(f"{name!r} in the save directory is not a regular file")

    def read_sidecar(self, name: str) -> dict | None:
        """The sidecar of slot file ``name``, or None when it has none; SidecarMismatch if it is damaged
        (not JSON, not an object, no checksum, or not a regular file)."""
        self.path_for(name)
        side = sidecar_name(name)
        if side is None:
            return None
        try:
            fd, size = self._open_regular(self._confined(side), side)
        except SlotFileNotFound:
            return None
        except InvalidFilename as e:  # a symlink or a FIFO where the sidecar should be
            raise SidecarMismatch(f"sidecar {side!r} is damaged: {e}") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(size + 1)
        return sidecar.parse(raw, side)

    # ------------------------------------------------------------------ writing

    def write_pair(self, name: str, data: memoryview, render_sidecar: Callable[[dict | None], bytes]) -> None:
        """Replace slot file ``name`` with ``data`` and its sidecar with render_sidecar(the old sidecar or
        None), as one unit. InsufficientStorage when the disk is full; on any failure the previous pair
        stays usable, and no temporary file is left behind."""
        target = self.path_for(name)
        side_name = sidecar_name(name)
        side = self._confined(side_name) if side_name is not None else None
        temps: list[Path] = []
        tmp_bin = None
        try:
            tmp_bin = self._write_temp(name, data, temps, recycle=True)
            with self.turn(EXCLUSIVE):  # the old sidecar is read, kept and replaced by one save at a time
                self._swap_pair(name, target, side, side_name, tmp_bin, render_sidecar, temps)
        except OSError as e:
            replaced = tmp_bin is not None and tmp_bin not in temps  # renamed into place
            had_bin = os.path.lexists(target)
            if e.errno in _NO_SPACE and not isinstance(e, InsufficientStorage):
                outcome = (f"the new '{name}' is in place, but the save did not complete" if replaced
                           else f"the previous '{name}' is kept" if had_bin else f"'{name}' was not saved")
                raise InsufficientStorage(e.errno, f"no space left in the slot save directory {str(self.root)!r} "
                                                   f"({os.strerror(e.errno)}): {outcome}") from e
            raise
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)

    def _swap_pair(self, name, target, side, side_name, tmp_bin, render_sidecar, temps) -> None:
        """The renames of write_pair, with the directory's lock held."""
        try:
            old = self.read_sidecar(name) if side is not None else None
        except SidecarMismatch:
            old = None  # a damaged sidecar protects nothing: replaced, not kept
        had_bin = os.path.lexists(target)
        tmp_side = self._write_temp(side_name, render_sidecar(old), temps) if side is not None else None
        if tmp_side is not None and (old is not None or not had_bin):
            # the new sidecar keeps the old one, so the old .bin still verifies until its rename
            self._rename(tmp_side, side, temps)
            self._replace_bin(tmp_bin, target, temps, had_bin)
        else:
            # no sidecar to keep: the new .bin alone is complete (a file without sidecar restores as it is)
            self._replace_bin(tmp_bin, target, temps, had_bin)
            if tmp_side is not None:
                self._rename(tmp_side, side, temps)

    def _write_temp(self, name: str, data, temps: list[Path], recycle: bool = False) -> Path:
        """Write ``data`` to a temporary file beside ``name`` (durably when sync), the spare when `recycle`
        and there is one, else a fresh file; returns its path."""
        fd, tmp = self._open_spare(temps) if recycle else (None, None)
        if fd is None:
            tmp = self.root / temp_name(name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            temps.append(tmp)
        try:
            with memoryview(data) as view:
                for at, end in _write_spans(len(view)):
                    chunk = view[at:end]
                    written = 0
                    with background.turn():  # not while a step runs (the copy into the page cache)
                        while written < len(chunk):  # a write may take only part of it
                            written += os.write(fd, chunk[written:])
                os.ftruncate(fd, len(view))  # a spare may have been longer
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _open_spare(self, temps: list[Path]) -> tuple[int | None, Path | None]:
        """The spare opened for writing in place, or (None, None). It goes on `temps`, so it is removed
        unless it becomes the new file."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None, None
        temps.append(spare)
        try:
            fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # gone, or not a regular file: a fresh file will do
            return None, None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # linked elsewhere: its bytes are someone's file
            os.close(fd)
            return None, None
        try:  # held until the write is done; a reader's lease (any process) refuses it
            flock(fd, EXCLUSIVE | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None, None
        return fd, spare

    def _replace_bin(self, tmp: Path, target: Path, temps: list[Path], had_bin: bool) -> bool:
        """Rename the new .bin over the old one, keeping the old inode as the next save's spare."""
        if had_bin and _is_regular(target) and _exchange(tmp, target):
            temps.remove(tmp)  # the new file is in place: tmp's name holds the old one now
            try:
                self._fsync_dir()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            spare = self.root / temp_name("spare")
            try:
                os.replace(tmp, spare)
                self._spare = spare
            except OSError:  # the save is done; without a spare the next one writes a fresh file
                tmp.unlink(missing_ok=True)
            return True
        keep = None
        if had_bin:
            keep = self.root / temp_name("spare")
            try:
                os.link(target, keep, follow_symlinks=False)
                temps.append(keep)
            except OSError:  # no hard links here, or no room for one more entry: the old file just goes
                keep = None
        self._rename(tmp, target, temps)
        if keep is not None:
            temps.remove(keep)
            self._spare = keep
        return True

    def _rename(self, tmp: Path, target: Path, temps: list[Path]) -> bool:
        # rename replaces a symlink at target rather than following it, so even a symlink planted
        # after path_for's check cannot redirect the write outside the directory
        os.replace(tmp, target)
        temps.remove(tmp)
        # between the two renames too: without it a crash may keep the second and lose the first
        self._fsync_dir()
        return True

    def _fsync_dir(self) -> None:
        if not self.sync:
            return
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ the rest

    def delete(self, name: str) -> None:
        """Remove a saved file and its sidecar."""
        path = self.path_for(name)
        with self.turn(EXCLUSIVE):  # not between a save's two renames
            self._delete(path, name)

    def _delete(self, path: Path, name: str) -> None:
        if not os.path.lexists(path):
            raise SlotFileNotFound(f"no saved slot file named {name!r}")
        # sidecar first: an interrupted delete then leaves a plain file, never a sidecar describing
        # a file that is gone (which a later llama-server file of that name would fail against)
        side = sidecar_name(name)
        if side is not None:
            (self.root / side).unlink(missing_ok=True)  # unlink never follows a link: a planted one just goes
        os.unlink(path)
        self._fsync_dir()

    def list(self) -> list[SavedFile]:
        """Saved slot files, by name; temp files, sidecars, symlinks, FIFOs and invalid names skipped."""
        out = []
        for entry in os.scandir(self.root):
            name = entry.name
            if is_reserved(name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                validate_filename(name)
            except InvalidFilename:
                continue
            st = entry.stat(follow_symlinks=False)
            side = sidecar_name(name)
            out.append(SavedFile(name, st.st_size, st.st_mtime, side is not None and os.path.lexists(self.root / side)))
        return sorted(out, key=lambda f: f.name)



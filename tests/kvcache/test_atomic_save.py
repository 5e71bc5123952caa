"""D5: a save replaces the .bin and its sidecar as one unit. A failure (the disk full, an I/O error) or a
kill at any step leaves the previous pair restorable, verified, with its logits; the .bin is never
left without its sidecar. The disk is filled by injecting the OSError a full disk raises (the machine
cannot fill a real file system safely); the kills are real SIGKILLs."""
import errno
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tiny import litter, restored, same, tiny_cache, tiny_store

from slotserve.kvcache import savedir
from slotserve.kvcache.savedir import InsufficientStorage

FIRST, OLD, NEW = tiny_cache(n=7, seed=0), tiny_cache(n=5, seed=1), tiny_cache(n=9, seed=2)
# the steps of a save (see test_the_steps_of_a_save): where the file system can swap two names (Linux
# renameat2), and where it cannot (a link keeps the old file, a rename puts the new one in place)
# (each file is written in two calls at least: savedir._write_spans)
STEPS = {
    "exchange": ["open", "write", "write", "ftruncate", "fsync", "open", "write", "write", "ftruncate", "fsync",
                 "replace", "open", "fsync", "exchange", "open", "fsync", "replace"],
    "link": ["open", "write", "write", "ftruncate", "fsync", "open", "write", "write", "ftruncate", "fsync",
             "replace", "open", "fsync", "link", "replace", "open", "fsync"],
}
BIN_RENAME = {"exchange": 14, "link": 15}  # the step that puts the new .bin in place
# steps that may fail without failing the save: opening the spare (a fresh file will do), keeping the
# old file as the next spare (the link, or the rename of the exchanged old file)
SPARE_OPEN, KEEP_SPARE = 1, {"exchange": 17, "link": 14}


class FailAt:
    """Raise OSError(code) at the n-th file-system step of a save: opening a file to write, a write, a
    truncation, an fsync, a link, a rename or an exchange (the real functions otherwise). With
    exchange=False the system is one that cannot swap two names."""

    def __init__(self, monkeypatch, n: int, code: int, exchange: bool = True):
        self.n, self.code, self.calls = n, code, []
        for fn in ("write", "ftruncate", "fsync", "link", "replace", "open"):
            real = getattr(os, fn)
            monkeypatch.setattr(os, fn, self._wrap(fn, real))
        swap = savedir._exchange if exchange else (lambda a, b: False)
        monkeypatch.setattr(savedir, "_exchange", self._wrap("exchange", swap) if exchange else swap)

    def _wrap(self, fn, real):
        def step(*args, **kw):
            if fn != "open" or args[1] & (os.O_WRONLY | os.O_DIRECTORY):  # reads are not steps of a save
                self.calls.append(fn)
                if len(self.calls) == self.n:
                    raise OSError(self.code, os.strerror(self.code))
            return real(*args, **kw)
        return step


def not_spare(root) -> list[str]:
    """The directory without the spare a save keeps (one at most)."""
    names = litter(root)
    assert len([n for n in names if n.startswith(".spare.tmp-")]) <= 1
    return [n for n in names if not n.startswith(".spare.tmp-")]


def save_failing_at(root: Path, monkeypatch, n: int, code: int, spare: bool = False, exchange: bool = True):
    """Save NEW over OLD with the n-th step failing; returns (the exception or None, the steps seen).
    spare: OLD replaced FIRST, so NEW is written over FIRST's inode."""
    store = tiny_store(root)
    if spare:
        store.save(FIRST, "s.bin")
    store.save(OLD, "s.bin")
    with monkeypatch.context() as m:
        fail = FailAt(m, n, code, exchange)
        try:
            store.save(NEW, "s.bin")
            err = None
        except OSError as exc:
            err = exc
    return err, fail.calls


@pytest.mark.parametrize("swap", ["exchange", "link"])
def test_the_steps_of_a_save(swap):
    """What the injection below walks through, so a new step cannot slip past it."""
    for spare in (False, True):
        with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as d:
            err, calls = save_failing_at(Path(d), mp, 10_000, errno.ENOSPC, spare, swap == "exchange")
            assert not_spare(Path(d)) == ["s.bin", "s.bin.meta.json"]  # and the old file kept as the spare
            assert len(litter(Path(d))) == 3
        assert err is None
        assert calls == STEPS[swap]
        assert calls[BIN_RENAME[swap] - 1] in ("replace", "exchange")


def test_without_sync_a_save_is_atomic_but_never_flushed(tmp_path, monkeypatch):
    """The durability choice: llama-server's behaviour (no fsync) keeps the two temp files and renames,
    so a killed process still leaves a whole pair; only a power loss may lose the save."""
    store = tiny_store(tmp_path, sync=False)
    store.save(OLD, "s.bin")
    with monkeypatch.context() as m:
        steps = FailAt(m, 10_000, errno.EIO)
        store.save(NEW, "s.bin")
    assert "fsync" not in steps.calls and steps.calls.count("replace") == 2 and "exchange" in steps.calls
    assert same(restored(store, "s.bin"), NEW)


@pytest.mark.parametrize("swap", ["exchange", "link"])
@pytest.mark.parametrize("spare", [False, True], ids=["fresh", "spare"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("n", range(1, 18))
def test_a_failure_at_any_step_keeps_a_usable_pair(tmp_path, monkeypatch, n, code, spare, swap):
    root = tmp_path / "slots"
    err, calls = save_failing_at(root, monkeypatch, n, code, spare, swap == "exchange")
    assert calls[n - 1] and len(calls) >= n
    fallback = n == KEEP_SPARE[swap] or (spare and n == SPARE_OPEN)
    assert (err is None) == fallback  # a save fails exactly where no fallback exists
    if err is None:
        assert same(restored(tiny_store(root), "s.bin"), NEW)
        return
    if code == errno.ENOSPC:
        assert isinstance(err, InsufficientStorage) and err.errno == errno.ENOSPC
        assert f"no space left in the slot save directory '{root}'" in str(err)
    else:
        assert not isinstance(err, InsufficientStorage) and err.errno == errno.EIO
    assert not_spare(root) == ["s.bin", "s.bin.meta.json"]  # no temp file left, the sidecar never gone
    back = restored(tiny_store(root), "s.bin")  # verified against the sidecar, logits included
    assert same(back, NEW if n > BIN_RENAME[swap] else OLD), f"failed at step {n} ({calls[-1]})"
    assert back.logits is not None


def test_a_failed_save_of_a_new_name_leaves_nothing(tmp_path, monkeypatch):
    store = tiny_store(tmp_path)
    with monkeypatch.context() as m:
        FailAt(m, 2, errno.ENOSPC)
        with pytest.raises(InsufficientStorage, match="'new.bin' was not saved"):
            store.save(NEW, "new.bin")
    assert litter(tmp_path) == []


KILLED_SAVE = r"""
import os, sys, time
sys.path[:0] = [sys.argv[3]]
from tiny import tiny_cache, tiny_store
store = tiny_store(sys.argv[1])
if sys.argv[4] == "spare":  # a save before: the one killed writes over the inode it replaced
    store.save(tiny_cache(n=5, seed=1), "s.bin")
from slotserve.kvcache import savedir
if sys.argv[5] == "link":  # a system that cannot swap two names
    savedir._exchange = lambda a, b: False
fn, nth = sys.argv[2].split(":")
where = savedir if fn == "_exchange" else os
real, seen = getattr(where, fn), []
def paused(*args, **kw):  # a slow disk: this step hangs, and then the process is killed
    seen.append(1)
    if len(seen) == int(nth):
        print("paused", flush=True)
        time.sleep(60)
    return real(*args, **kw)
setattr(where, fn, paused)
store.save(tiny_cache(n=9, seed=2), "s.bin")
"""

# each step of the killed save, in order: (function, which call of it), and whether the new .bin is in
# place by then; where the system can swap two names, and where it cannot
KILL_POINTS = {
    "exchange": [("fsync:1", False), ("fsync:2", False), ("replace:1", False), ("fsync:3", False),
                 ("_exchange:1", False), ("fsync:4", True), ("replace:2", True)],
    "link": [("fsync:1", False), ("fsync:2", False), ("replace:1", False), ("fsync:3", False),
             ("link:1", False), ("replace:2", False), ("fsync:4", True)],
}


@pytest.mark.parametrize("spare", ["fresh", "spare"])
@pytest.mark.parametrize("swap,point,replaced", [(swap, *p) for swap, points in KILL_POINTS.items() for p in points])
def test_a_save_killed_at_any_step_leaves_a_usable_pair(tmp_path, swap, point, replaced, spare):
    tiny_store(tmp_path).save(FIRST if spare == "spare" else OLD, "s.bin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path), point, str(Path(__file__).parent),
                             spare, swap], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("paused")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = tiny_store(tmp_path)  # a restarted server sweeps the dead save's temp files
    assert litter(tmp_path) == ["s.bin", "s.bin.meta.json"]
    back = restored(store, "s.bin")
    assert same(back, NEW if replaced else OLD) and back.logits is not None

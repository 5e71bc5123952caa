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

from slotserve.kvcache.savedir import InsufficientStorage

OLD, NEW = tiny_cache(n=5, seed=1), tiny_cache(n=9, seed=2)
BIN_RENAME = 10  # the step that puts the new .bin in place (see test_the_steps_of_a_save)


class FailAt:
    """Raise OSError(code) at the n-th file-system step of a save: creating a file, a write, an fsync
    or a rename (os functions are the real ones otherwise)."""

    def __init__(self, monkeypatch, n: int, code: int):
        self.n, self.code, self.calls = n, code, []
        for fn in ("write", "fsync", "replace", "open"):
            real = getattr(os, fn)
            monkeypatch.setattr(os, fn, self._wrap(fn, real))

    def _wrap(self, fn, real):
        def step(*args, **kw):
            if fn != "open" or args[1] & (os.O_CREAT | os.O_DIRECTORY):  # reads are not steps of a save
                self.calls.append(fn)
                if len(self.calls) == self.n:
                    raise OSError(self.code, os.strerror(self.code))
            return real(*args, **kw)
        return step


def save_failing_at(root: Path, monkeypatch, n: int, code: int):
    """Save NEW over OLD with the n-th step failing; returns (the exception or None, the steps seen)."""
    store = tiny_store(root)
    store.save(OLD, "s.bin")
    with monkeypatch.context() as m:
        fail = FailAt(m, n, code)
        try:
            store.save(NEW, "s.bin")
            err = None
        except OSError as exc:
            err = exc
    return err, fail.calls


def test_the_steps_of_a_save():
    """What the injection below walks through, so a new step cannot slip past it."""
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as d:
        err, calls = save_failing_at(Path(d), mp, 10_000, errno.ENOSPC)
    assert err is None and calls[BIN_RENAME - 1] == "replace"
    assert calls == ["open", "write", "fsync", "open", "write", "fsync", "replace", "open", "fsync",
                     "replace", "open", "fsync"]


def test_without_sync_a_save_is_atomic_but_never_flushed(tmp_path, monkeypatch):
    """The durability choice: llama-server's behaviour (no fsync) keeps the two temp files and renames,
    so a killed process still leaves a whole pair; only a power loss may lose the save."""
    store = tiny_store(tmp_path, sync=False)
    store.save(OLD, "s.bin")
    with monkeypatch.context() as m:
        steps = FailAt(m, 10_000, errno.EIO)
        store.save(NEW, "s.bin")
    assert "fsync" not in steps.calls and steps.calls.count("replace") == 2
    assert same(restored(store, "s.bin"), NEW)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("n", range(1, 13))
def test_a_failure_at_any_step_keeps_a_usable_pair(tmp_path, monkeypatch, n, code):
    root = tmp_path / "slots"
    err, calls = save_failing_at(root, monkeypatch, n, code)
    assert err is not None and len(calls) == n
    if code == errno.ENOSPC:
        assert isinstance(err, InsufficientStorage) and err.errno == errno.ENOSPC
        assert f"no space left in the slot save directory '{root}'" in str(err)
    else:
        assert not isinstance(err, InsufficientStorage) and err.errno == errno.EIO
    assert litter(root) == ["s.bin", "s.bin.meta.json"]  # no temp file left, the sidecar never gone
    back = restored(tiny_store(root), "s.bin")  # verified against the sidecar, logits included
    assert same(back, NEW if n > BIN_RENAME else OLD), f"failed at step {n} ({calls[-1]})"
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
fn, nth = sys.argv[2].split(":")
real, seen = getattr(os, fn), []
def paused(*args, **kw):  # a slow disk: this step hangs, and then the process is killed
    seen.append(1)
    if len(seen) == int(nth):
        print("paused", flush=True)
        time.sleep(60)
    return real(*args, **kw)
setattr(os, fn, paused)
tiny_store(sys.argv[1]).save(tiny_cache(n=9, seed=2), "s.bin")
"""

# each step of a save, in order: (function, which call of it), and whether the new .bin is in place by then
KILL_POINTS = [("fsync:1", False), ("fsync:2", False), ("replace:1", False), ("fsync:3", False),
               ("replace:2", False), ("fsync:4", True)]


@pytest.mark.parametrize("point,replaced", KILL_POINTS)
def test_a_save_killed_at_any_step_leaves_a_usable_pair(tmp_path, point, replaced):
    tiny_store(tmp_path).save(OLD, "s.bin")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path), point, str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("paused")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = tiny_store(tmp_path)  # a restarted server sweeps the dead save's temp files
    assert litter(tmp_path) == ["s.bin", "s.bin.meta.json"]
    back = restored(store, "s.bin")
    assert same(back, NEW if replaced else OLD) and back.logits is not None

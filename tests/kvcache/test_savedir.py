"""The save directory with real files, through the store's one read path: confinement, non-regular
files, listing, deletion and stale temp files."""
import json
import os
import threading

import pytest
from tiny import TINY, litter, restored, same, tiny_cache, tiny_store

from slotserve.kvcache.persist import SlotStore
from slotserve.kvcache.savedir import (
    InvalidFilename, SaveDir, SidecarMismatch, SlotFileNotFound, UnsafePath,
)
from slotserve.kvcache.slotfile import SlotFileError


@pytest.fixture
def store(tmp_path) -> SlotStore:
    return tiny_store(tmp_path / "slots")


def names(store: SlotStore) -> list[str]:
    return [f["filename"] for f in store.list_files()]


def test_invalid_names_touch_nothing(store, tmp_path):
    for name in ("../escape.bin", "..", "a/b", "x.meta.json", ".x.tmp-1-ab"):
        with pytest.raises(InvalidFilename):
            store.save(tiny_cache(), name)
        with pytest.raises(InvalidFilename):
            restored(store, name)
    assert not (tmp_path / "escape.bin").exists()
    assert litter(store.dir.root) == []


def test_save_restore_list_delete(store):
    first, second = tiny_cache(seed=1), tiny_cache(n=7, seed=2)
    store.save(first, "a.bin")
    store.save(second, "a.bin")
    store.save(first, "b")
    assert same(restored(store, "a.bin"), second)
    files = store.list_files()
    assert [(f["filename"], f["n_tokens"], f["matches_model"], f["damaged"]) for f in files] == [
        ("a.bin", 7, True, None), ("b", 5, True, None)]
    assert files[0]["size"] == (store.dir.root / "a.bin").stat().st_size and files[0]["modified"] > 0
    store.delete("a.bin")
    assert names(store) == ["b"]
    assert litter(store.dir.root) == ["b", "b.meta.json"]


def test_missing_file(store):
    with pytest.raises(SlotFileNotFound, match="no saved slot file named 'nope.bin'") as e:
        restored(store, "nope.bin")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(SlotFileNotFound):
        store.delete("nope.bin")


def test_directory_is_not_a_slot_file(store):
    (store.dir.root / "d.bin").mkdir()
    with pytest.raises(InvalidFilename, match="not a regular file"):
        restored(store, "d.bin")
    assert names(store) == []


def test_root_through_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = tiny_store(tmp_path / "link")
    store.save(tiny_cache(), "a.bin")
    assert (real / "a.bin").exists() and same(restored(store, "a.bin"), tiny_cache())


def in_thread(fn, timeout=10.0):
    """fn() in a thread; (finished, its result or exception). A blocked call is reported, not waited for."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), out


def unblock(fifo):
    """Open a FIFO for writing once, so a reader blocked on it (old code) can end."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.mark.parametrize("where", ["file", "sidecar"])
def test_a_fifo_is_refused_without_blocking(store, where):
    """D4: opening a FIFO blocks until a writer comes; the engine thread must never wait on one."""
    store.save(tiny_cache(), "a.bin")
    fifo = store.dir.root / ("f.bin" if where == "file" else "a.bin.meta.json")
    if where == "sidecar":
        fifo.unlink()
    os.mkfifo(fifo)
    name = "f.bin" if where == "file" else "a.bin"
    try:
        finished, out = in_thread(lambda: restored(store, name))
        assert finished, "restore blocked on a FIFO"
        err = out.get("error")
        if where == "file":
            assert isinstance(err, InvalidFilename) and "not a regular file" in str(err)
        else:
            assert isinstance(err, SidecarMismatch) and "not a regular file" in str(err)
        finished, out = in_thread(store.list_files)
        assert finished, "listing blocked on a FIFO"
        listed = {f["filename"]: f for f in out["value"]}
        assert "f.bin" not in listed
        if where == "sidecar":
            assert "not a regular file" in listed["a.bin"]["damaged"]
    finally:
        unblock(fifo)


# ------------------------------------------------------------------------------------- symlinks

@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(b"do not touch")
    return path


def test_symlink_escape_refused(store, outside):
    (store.dir.root / "evil.bin").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symbolic link"):
        store.save(tiny_cache(), "evil.bin")
    with pytest.raises(UnsafePath):
        restored(store, "evil.bin")
    with pytest.raises(UnsafePath):
        store.delete("evil.bin")
    assert outside.read_bytes() == b"do not touch"
    assert (store.dir.root / "evil.bin").is_symlink()
    assert names(store) == []


def test_symlink_inside_refused_too(store):
    store.save(tiny_cache(), "real.bin")
    (store.dir.root / "alias.bin").symlink_to(store.dir.root / "real.bin")
    with pytest.raises(UnsafePath):
        restored(store, "alias.bin")
    assert names(store) == ["real.bin"]


def test_symlinked_sidecar_refused(store, outside):
    (store.dir.root / "x.bin.meta.json").symlink_to(outside)
    with pytest.raises(UnsafePath):
        store.save(tiny_cache(), "x.bin")
    assert outside.read_bytes() == b"do not touch"
    assert not (store.dir.root / "x.bin").exists()
    (store.dir.root / "x.bin").write_bytes(b"plain")
    store.delete("x.bin")  # removes the link itself, never what it points to
    assert outside.read_bytes() == b"do not touch" and litter(store.dir.root) == []


def test_symlink_planted_after_the_check(store, outside, monkeypatch):
    # the race the path checks cannot see: the open and the rename must still not follow the link
    store.save(tiny_cache(), "late.bin")
    target = store.dir.root / "late.bin"
    monkeypatch.setattr(SaveDir, "_confined", lambda self, name: self.root / name)  # the check already passed
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(UnsafePath):
        restored(store, "late.bin")
    store.save(tiny_cache(seed=3), "late.bin")
    assert outside.read_bytes() == b"do not touch"
    assert not target.is_symlink() and same(restored(store, "late.bin"), tiny_cache(seed=3))


# ------------------------------------------------------------------------------------- listing

@pytest.mark.parametrize("damage,reason", [
    ("not json", "is damaged: Expecting"), ("list", "not a JSON object"), ("no checksum", "no checksum"),
    ("symlink", "symbolic link"), ("directory", "not a regular file"),
])
def test_a_damaged_sidecar_is_listed_as_damaged(store, damage, reason):
    """D3: one bad sidecar must not break the listing of every file; restoring it is refused."""
    store.save(tiny_cache(), "a.bin")
    store.save(tiny_cache(seed=1), "good.bin")
    side = store.dir.root / "a.bin.meta.json"
    side.unlink()
    if damage == "not json":
        side.write_text("{not json")
    elif damage == "list":
        side.write_text("[1, 2]")
    elif damage == "no checksum":
        side.write_text(json.dumps({"size": 3}))
    elif damage == "symlink":
        side.symlink_to(store.dir.root / "good.bin.meta.json")
    else:
        side.mkdir()
    files = {f["filename"]: f for f in store.list_files()}
    assert reason in files["a.bin"]["damaged"]
    assert files["a.bin"]["matches_model"] is None and files["a.bin"]["n_tokens"] is None
    assert files["good.bin"]["damaged"] is None and files["good.bin"]["matches_model"] is True
    with pytest.raises(SidecarMismatch, match=reason):
        restored(store, "a.bin")


# ------------------------------------------------------------------------------------- sizes and leftovers

def test_a_file_larger_than_a_slot_can_hold_is_refused_before_it_is_read(store):
    """D2: the size is checked against the slot first; the read buffer never grows for such a file."""
    big = store.dir.root / "big.bin"
    with open(big, "wb") as f:
        f.write(b"ggsq" + (4).to_bytes(4, "little"))
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(SlotFileError, match=r"file is 67108864 bytes, more than a slot of 16 tokens can hold"):
        restored(store, "big.bin")
    assert len(store._read._data) == 0  # nothing was allocated for it, let alone read


def test_a_bad_head_is_refused_before_the_bulk_is_read(store):
    store.save(tiny_cache(n=5), "a.bin")
    data = (store.dir.root / "a.bin").read_bytes()
    (store.dir.root / "a.bin.meta.json").unlink()
    (store.dir.root / "a.bin").write_bytes(b"GGSQ" + data[4:])
    with pytest.raises(SlotFileError, match="bad magic"):
        restored(store, "a.bin")


def test_stale_temp_files(tmp_path):
    root = tmp_path / "slots"
    store = tiny_store(root)
    store.save(tiny_cache(), "a.bin")
    stale = root / ".a.bin.tmp-99999-deadbeef"
    stale.write_bytes(b"half a save")
    assert names(store) == ["a.bin"]  # never listed
    assert same(restored(store, "a.bin"), tiny_cache())
    SaveDir(root)  # a restart clears what a killed save left
    assert not stale.exists() and litter(root) == ["a.bin", "a.bin.meta.json"]


def test_long_names_fit(store):
    name = "n" * 255
    store.save(tiny_cache(), name)  # temp name is shortened; no room for a sidecar
    assert litter(store.dir.root) == [name]
    back = restored(store, name)
    assert back.logits is None and same(back, tiny_cache(logits=False))
    assert [(f.name, f.has_sidecar) for f in store.dir.list()] == [(name, False)]


def test_a_foreign_model_directory_lists_as_not_matching(tmp_path):
    root = tmp_path / "slots"
    tiny_store(root, TINY.__class__(**{**TINY.__dict__, "fingerprint": "fp-other"})).save(tiny_cache(), "o.bin")
    assert [(f["filename"], f["matches_model"]) for f in tiny_store(root).list_files()] == [("o.bin", False)]


def test_a_save_writes_over_the_file_the_previous_save_replaced(store):
    path = store.dir.root / "a.bin"
    store.save(tiny_cache(seed=1), "a.bin")
    first = path.stat().st_ino
    store.save(tiny_cache(n=9, seed=2), "a.bin")
    assert path.stat().st_ino != first and len(litter(store.dir.root)) == 3  # the pair and one spare
    store.save(tiny_cache(n=3, seed=3), "b.bin")  # any name: one spare per directory
    assert (store.dir.root / "b.bin").stat().st_ino == first
    assert litter(store.dir.root) == ["a.bin", "a.bin.meta.json", "b.bin", "b.bin.meta.json"]
    assert same(restored(store, "a.bin"), tiny_cache(n=9, seed=2))
    assert same(restored(store, "b.bin"), tiny_cache(n=3, seed=3))  # shorter than the spare was: truncated


def test_a_file_linked_elsewhere_is_never_written_over(store):
    store.save(tiny_cache(seed=1), "a.bin")
    os.link(store.dir.root / "a.bin", store.dir.root / "backup.bin")  # someone's hard-linked copy
    kept = (store.dir.root / "backup.bin").read_bytes()
    store.save(tiny_cache(seed=2), "a.bin")
    store.save(tiny_cache(seed=3), "a.bin")
    assert (store.dir.root / "backup.bin").read_bytes() == kept
    assert same(restored(store, "a.bin"), tiny_cache(seed=3))

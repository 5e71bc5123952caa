"""The save directory with real files: name rules, confinement, atomic writes, sidecars."""
import hashlib
import json
import os
import zlib

import pytest
from conftest import shared_file

from slotserve.kvcache import savedir as savedir_mod
from slotserve.kvcache.savedir import (
    InvalidFilename, SaveDir, SidecarMismatch, SlotFileNotFound, UnsafePath, validate_filename, verify_sidecar,
)
from slotserve.kvcache.slotfile import decode_slot_file

META = {"model_fingerprint": "fp-stories", "model_name": "stories260K", "n_tokens": 84, "kv_type": "f16"}


@pytest.fixture
def sd(tmp_path) -> SaveDir:
    return SaveDir(tmp_path / "slots")


def names(sd: SaveDir) -> list[str]:
    return [f.name for f in sd.list()]


def litter(sd: SaveDir) -> list[str]:
    """Everything in the directory, temp files included."""
    return sorted(os.listdir(sd.root))


# ------------------------------------------------------------------------------------- name rules

@pytest.mark.parametrize("name", [
    "slot1.bin", "france", "a.b.c", ".hidden", "名前 with space.bin", "x" * 255, "é" * 127, "a~b#c%",
])
def test_valid_names(name):
    validate_filename(name)


@pytest.mark.parametrize("name,message", [
    ("", "empty"),
    ("../x", "path separator '/'"),
    ("a/b", "path separator '/'"),
    ("a\\b", "path separator"),
    ("..", "names a directory"),
    (".", "names a directory"),
    ("x..y", "contains '..'"),
    ("x" * 256, "256 bytes long, the limit is 255"),
    ("é" * 128, "256 bytes long"),
    ("a\x01b", "control character U\\+0001 at position 1"),
    ("a\x00b", "control character U\\+0000"),
    ("a\nb", "control character U\\+000A"),
    ("a\x7f", "U\\+007F"),
    ("a\x85", "U\\+0085"),
    ("a.", "ends with '.'"),
    ("a ", "space"),
    (" a", "space"),
    ("a:b", "':'"),
    ("a*b", "'\\*'"),
    ("a?b", "'\\?'"),
    ('a"b', "'\"'"),
    ("a<b", "'<'"),
    ("a|b", "'\\|'"),
    ("a\u2215b", "DIVISION SLASH"),
    ("a\u2216b", "SET MINUS"),
    ("a\uff0eb", "FULLWIDTH FULL STOP"),
    ("a\ufffd", "REPLACEMENT"),
    ("\ufeffa", "BYTE ORDER MARK"),
    ("a\ud800b", "not valid UTF-8"),
])
def test_invalid_names(name, message):
    with pytest.raises(InvalidFilename, match=message):
        validate_filename(name)


def test_non_string_name():
    with pytest.raises(InvalidFilename, match="string"):
        validate_filename(b"x.bin")


def test_reserved_names(sd):
    for name in ("x.meta.json", ".x.tmp-12-abcd"):
        validate_filename(name)  # fine for llama.cpp, but they would collide with our own files
        with pytest.raises(InvalidFilename, match="reserved"):
            sd.path_for(name)


def test_invalid_names_touch_nothing(sd, tmp_path):
    for name in ("../escape.bin", "..", "a/b"):
        with pytest.raises(InvalidFilename):
            sd.write_atomic(name, b"x")
        with pytest.raises(InvalidFilename):
            sd.read(name)
    assert not (tmp_path / "escape.bin").exists()
    assert litter(sd) == []


# ------------------------------------------------------------------------------------- plain files

def test_write_read_list_delete(sd):
    sd.write_atomic("a.bin", b"first")
    sd.write_atomic("a.bin", b"second")
    sd.write_atomic("b", b"xyz")
    assert sd.read("a.bin") == b"second"
    files = sd.list()
    assert [(f.name, f.size, f.has_sidecar) for f in files] == [("a.bin", 6, False), ("b", 3, False)]
    assert all(f.mtime > 0 for f in files)
    sd.delete("a.bin")
    assert names(sd) == ["b"]
    assert litter(sd) == ["b"]


def test_missing_file(sd):
    with pytest.raises(SlotFileNotFound, match="no saved slot file named 'nope.bin'") as e:
        sd.read("nope.bin")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(SlotFileNotFound):
        sd.delete("nope.bin")
    with pytest.raises(SlotFileNotFound):
        sd.read_slot("nope.bin")


def test_directory_is_not_a_slot_file(sd):
    (sd.root / "d.bin").mkdir()
    with pytest.raises(InvalidFilename, match="not a regular file"):
        sd.read("d.bin")
    assert names(sd) == []


def test_root_through_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    sd = SaveDir(tmp_path / "link")
    sd.write_atomic("a.bin", b"ok")
    assert (real / "a.bin").read_bytes() == b"ok"


# ------------------------------------------------------------------------------------- symlinks

@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(b"do not touch")
    return path


def test_symlink_escape_refused(sd, outside):
    (sd.root / "evil.bin").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symbolic link"):
        sd.write_atomic("evil.bin", b"overwritten")
    with pytest.raises(UnsafePath):
        sd.write_slot("evil.bin", b"overwritten", META)
    with pytest.raises(UnsafePath):
        sd.read("evil.bin")
    with pytest.raises(UnsafePath):
        sd.delete("evil.bin")
    assert outside.read_bytes() == b"do not touch"
    assert (sd.root / "evil.bin").is_symlink()
    assert names(sd) == []


def test_symlink_inside_refused_too(sd):
    sd.write_atomic("real.bin", b"data")
    (sd.root / "alias.bin").symlink_to(sd.root / "real.bin")
    with pytest.raises(UnsafePath):
        sd.read("alias.bin")
    assert names(sd) == ["real.bin"]


def test_symlinked_sidecar_refused(sd, outside):
    (sd.root / "x.bin.meta.json").symlink_to(outside)
    with pytest.raises(UnsafePath):
        sd.write_slot("x.bin", b"data", META)
    assert outside.read_bytes() == b"do not touch"
    assert not (sd.root / "x.bin").exists()


def test_symlink_planted_after_the_check(sd, outside):
    # the race path_for cannot see: the low-level open/rename must still not follow the link
    target = sd.root / "late.bin"
    target.symlink_to(outside)
    with pytest.raises(UnsafePath):
        sd._read_path(target, "late.bin")
    sd._write_atomic_path(target, b"new")
    assert outside.read_bytes() == b"do not touch"
    assert not target.is_symlink() and target.read_bytes() == b"new"


# ------------------------------------------------------------------------------------- atomicity

def test_failed_write_leaves_old_file(sd, monkeypatch):
    sd.write_atomic("a.bin", b"old contents")

    def broken_fsync(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(savedir_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        sd.write_atomic("a.bin", b"new contents that never land")
    monkeypatch.undo()
    assert sd.read("a.bin") == b"old contents"
    assert litter(sd) == ["a.bin"]  # the temp file is gone


def test_failed_rename_leaves_old_file(sd, monkeypatch):
    sd.write_atomic("a.bin", b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(savedir_mod.os, "replace", broken_replace)
    with pytest.raises(OSError):
        sd.write_atomic("a.bin", b"new")
    monkeypatch.undo()
    assert sd.read("a.bin") == b"old" and litter(sd) == ["a.bin"]


def test_write_of_non_bytes_fails_cleanly(sd):
    sd.write_atomic("a.bin", b"old")
    with pytest.raises(TypeError):
        sd.write_atomic("a.bin", "a str is not bytes")
    assert sd.read("a.bin") == b"old" and litter(sd) == ["a.bin"]


def test_stale_temp_files(tmp_path):
    root = tmp_path / "slots"
    sd = SaveDir(root)
    sd.write_atomic("a.bin", b"kept")
    stale = root / ".a.bin.tmp-99999-deadbeef"
    stale.write_bytes(b"half a save")
    assert names(sd) == ["a.bin"]  # never listed
    assert sd.read("a.bin") == b"kept"
    SaveDir(root)  # a restart clears what a killed save left
    assert not stale.exists() and litter(sd) == ["a.bin"]


def test_long_names_fit(sd):
    name = "n" * 255
    sd.write_slot(name, b"data", META)  # temp name is shortened; no room for a sidecar
    assert sd.read_slot(name) == (b"data", None)
    assert [(f.name, f.has_sidecar) for f in sd.list()] == [(name, False)]


# ------------------------------------------------------------------------------------- sidecars

def test_sidecar_round_trip(sd):
    meta = sd.write_slot("s.bin", b"payload", META)
    assert meta["size"] == 7 and meta["crc32"] == f"{zlib.crc32(b'payload'):08x}"
    assert litter(sd) == ["s.bin", "s.bin.meta.json"]
    data, got = sd.read_slot("s.bin")
    assert data == b"payload" and got == {**META, "size": 7, "crc32": meta["crc32"]}
    verify_sidecar(data, got, fingerprint="fp-stories")
    verify_sidecar(data, got, fingerprint=None)  # caller without a fingerprint skips the model check
    assert sd.read_sidecar("s.bin") == got
    assert [(f.name, f.has_sidecar) for f in sd.list()] == [("s.bin", True)]
    sd.delete("s.bin")
    assert litter(sd) == []


def test_damaged_file_detected(sd):
    sd.write_slot("s.bin", b"payload", META)
    path = sd.root / "s.bin"
    path.write_bytes(b"paYload")
    with pytest.raises(SidecarMismatch, match="file is damaged: crc32 mismatch"):
        verify_sidecar(*sd.read_slot("s.bin"), fingerprint="fp-stories")
    path.write_bytes(b"pay")
    with pytest.raises(SidecarMismatch, match="file is damaged: it is 3 bytes, its sidecar says 7"):
        verify_sidecar(*sd.read_slot("s.bin"), fingerprint="fp-stories")


def test_other_model_detected(sd):
    sd.write_slot("s.bin", b"payload", META)
    with pytest.raises(SidecarMismatch, match="saved from another model: stories260K"):
        verify_sidecar(*sd.read_slot("s.bin"), fingerprint="fp-other")


def test_damaged_sidecar(sd):
    sd.write_slot("s.bin", b"payload", META)
    side = sd.root / "s.bin.meta.json"
    side.write_text("{not json")
    with pytest.raises(SidecarMismatch, match="sidecar 's.bin.meta.json' is damaged"):
        sd.read_slot("s.bin")
    side.write_text("[1, 2]")
    with pytest.raises(SidecarMismatch, match="not a JSON object"):
        sd.read_slot("s.bin")
    side.write_text(json.dumps({"size": 7}))
    with pytest.raises(SidecarMismatch, match="no checksum"):
        verify_sidecar(*sd.read_slot("s.bin"), fingerprint=None)
    side.write_text(json.dumps({"crc32": "00000000"}))
    with pytest.raises(SidecarMismatch, match="no 'size'"):
        verify_sidecar(*sd.read_slot("s.bin"), fingerprint=None)


def test_older_sha256_sidecar_still_verified(sd):
    """Sidecars written before crc32 carry a sha256: their files restore, and damage is still caught."""
    sd.write_slot("s.bin", b"payload", META)
    side = sd.root / "s.bin.meta.json"
    old = {**META, "size": 7, "sha256": hashlib.sha256(b"payload").hexdigest()}
    side.write_text(json.dumps(old))
    assert sd.read_slot_checked("s.bin", "fp-stories", lambda data, meta: bytes(data)) == b"payload"
    (sd.root / "s.bin").write_bytes(b"paYload")
    with pytest.raises(SidecarMismatch, match="file is damaged: sha256 mismatch"):
        sd.read_slot_checked("s.bin", "fp-stories", lambda data, meta: bytes(data))


def test_checked_read_reports_damage_rather_than_what_it_broke(sd):
    """consume runs before the checksum is known: a damaged file must surface as damage, and a
    consume that failed on its own, with a good checksum, as its own error."""
    sd.write_slot("s.bin", b"payload", META)
    def refuse(data, meta):
        raise ValueError("not a slot file")

    with pytest.raises(ValueError, match="not a slot file"):
        sd.read_slot_checked("s.bin", "fp-stories", refuse)
    (sd.root / "s.bin").write_bytes(b"paYload")
    with pytest.raises(SidecarMismatch, match="crc32 mismatch"):
        sd.read_slot_checked("s.bin", "fp-stories", refuse)
    with pytest.raises(SidecarMismatch, match="saved from another model"):
        sd.read_slot_checked("s.bin", "fp-other", refuse)


def test_failed_resave_keeps_old_file_restorable(sd, monkeypatch):
    sd.write_slot("s.bin", b"old", META)
    def broken_fsync(fd):
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(savedir_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        sd.write_slot("s.bin", b"new", META)
    monkeypatch.undo()
    # the old sidecar went first, so what is left is the old file without one: still restorable
    data, meta = sd.read_slot("s.bin")
    assert data == b"old" and meta is None
    verify_sidecar(data, meta, fingerprint="fp-stories")
    assert litter(sd) == ["s.bin"]


def test_llama_server_file_without_sidecar(sd):
    golden = shared_file("golden", "llama-server-slot-france.bin").read_bytes()
    sd.write_atomic("france.bin", golden)  # as if llama-server had saved it here
    data, meta = sd.read_slot("france.bin")
    assert meta is None and sd.read_sidecar("france.bin") is None
    verify_sidecar(data, meta, fingerprint="fp-stories")
    state = decode_slot_file(data, n_layer=5, n_embd_k_gqa=32, n_embd_v_gqa=32, n_ctx_slot=256, n_vocab=512)
    assert len(state.tokens) == 84

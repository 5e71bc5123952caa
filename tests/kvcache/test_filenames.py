"""Slot file names: llama.cpp's rules, and the names slotserve keeps for its own files."""
import os

import pytest

from slotserve.kvcache.filenames import (
    HOST, LOCK_NAME, InvalidFilename, check_slot_name, is_temp, sidecar_name, temp_name, temp_writer,
    validate_filename,
)


@pytest.mark.parametrize("name", [
    "slot1.bin", "france", "a.b.c", ".hidden", "名前 with space.bin", "x" * 255, "é" * 127, "a~b#c%",
])
def test_valid_names(name):
    validate_filename(name)
    check_slot_name(name)


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


@pytest.mark.parametrize("name,kind", [("x.meta.json", "sidecar"), (".x.tmp-12-abcd", "temporary")])
def test_reserved_names(name, kind):
    validate_filename(name)  # fine for llama.cpp, but they would collide with our own files
    with pytest.raises(InvalidFilename, match=f"reserved for slotserve's own {kind} files"):
        check_slot_name(name)


def test_temp_names_are_recognised_and_fit():
    for target in ("a.bin", "n" * 255, "é" * 127):
        tmp = temp_name(target)
        assert is_temp(tmp) and len(tmp.encode("utf-8")) <= 255
        check_slot_name(target)


def test_a_temp_name_says_which_process_wrote_it():
    # the host and pid let a process sharing the directory tell a dead save's leftovers from a live one
    assert temp_writer(temp_name("a.bin")) == (HOST, os.getpid())
    assert temp_writer(".a.bin.tmp-4242-0badf00d") == (None, 4242)  # written before hosts were recorded
    assert temp_writer(".a.bin.tmp-node_7.lan-4242-0badf00d") == ("node_7.lan", 4242)  # '-' becomes '_'
    assert temp_writer("a.bin") is None


def test_the_lock_file_is_not_a_slot_name():
    with pytest.raises(InvalidFilename, match="reserved for slotserve's own lock files"):
        check_slot_name(LOCK_NAME)


def test_a_name_too_long_for_a_sidecar_has_none():
    assert sidecar_name("a.bin") == "a.bin.meta.json"
    assert sidecar_name("n" * 245) == "n" * 245 + ".meta.json"
    assert sidecar_name("n" * 246) is None

"""Slot file names: llama.cpp's rules for the names clients send, and the names slotserve keeps for itself.

Names come from HTTP clients, so every name is checked with llama.cpp's rules (fs_validate_filename,
no subdirectories). Two families of names are slotserve's own and never a client's: sidecars
(``<name>.meta.json``) and the temporary files of a save in progress, plus the directory's lock file.
A temporary name carries its writer's host and pid, so a process sharing the directory can tell a
dead writer's leftovers from a live writer's save in progress.
"""
from __future__ import annotations

import os
import re
import secrets
import socket

NAME_MAX = 255  # bytes, the common Linux file-system limit llama.cpp also uses
SIDECAR_SUFFIX = ".meta.json"
LOCK_NAME = ".slotserve.lock"  # saves and pair reads of processes sharing the directory take turns on it
# .<target>.tmp-<host>-<pid>-<random>; names without the host were written before it was recorded
_TEMP_RE = re.compile(r"^\..*\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-)?(?P<pid>\d+)-[0-9a-f]+$", re.DOTALL)
HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "_"

# code points llama.cpp refuses besides controls, with what they would be mistaken for
_LOOKALIKES = {0xFF0E: "'.' (FULLWIDTH FULL STOP)", 0x2215: "'/' (DIVISION SLASH)",
               0x2216: "'\\' (SET MINUS)", 0xFFFD: "REPLACEMENT CHARACTER", 0xFEFF: "BYTE ORDER MARK"}
_ILLEGAL = set(':*?"<>|')


class InvalidFilename(ValueError):
    """A slot file name a client may not use; the message says which rule it breaks."""


def validate_filename(name: str) -> None:
    """Raise InvalidFilename unless llama.cpp's fs_validate_filename (no subdirectories) accepts ``name``."""
    if not isinstance(name, str):
        raise InvalidFilename(f"filename must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidFilename("filename is empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        # only lone surrogates get here: Python strings cannot hold overlong or out-of-range forms
        raise InvalidFilename("filename is not valid UTF-8 (it contains a UTF-16 surrogate)") from None
    if len(raw) > NAME_MAX:
        raise InvalidFilename(f"filename is {len(raw)} bytes long, the limit is {NAME_MAX}")
    for i, ch in enumerate(name):
        c = ord(ch)
        if c <= 0x1F or c == 0x7F or 0x80 <= c <= 0x9F:
            raise InvalidFilename(f"filename contains control character U+{c:04X} at position {i}")
        if c in _LOOKALIKES:
            raise InvalidFilename(f"filename contains U+{c:04X} {_LOOKALIKES[c]} at position {i}")
        if ch in "/\\":
            raise InvalidFilename(f"filename contains the path separator {ch!r}: subdirectories are not allowed")
        if ch in _ILLEGAL:
            raise InvalidFilename(f"filename contains {ch!r}, which is not allowed in file names")
    if name in (".", ".."):
        raise InvalidFilename(f"filename {name!r} names a directory")
    # Windows strips these, so the file would silently get another name there
    if name[0] == " " or name[-1] == " ":
        raise InvalidFilename("filename starts or ends with a space")
    if name[-1] == ".":
        raise InvalidFilename("filename ends with '.'")
    # llama.cpp refuses '..' anywhere, not only as a whole name
    if ".." in name:
        raise InvalidFilename("filename contains '..'")


def is_reserved(name: str) -> bool:
    """A sidecar's or a temporary file's name: never a slot file, whatever llama.cpp would allow."""
    return name.endswith(SIDECAR_SUFFIX) or name == LOCK_NAME or is_temp(name)


def check_slot_name(name: str) -> None:
    """validate_filename, and refuse the names slotserve keeps for its own files."""
    validate_filename(name)
    if is_reserved(name):
        kind = "sidecar" if name.endswith(SIDECAR_SUFFIX) else "lock" if name == LOCK_NAME else "temporary"
        raise InvalidFilename(f"filename {name!r} is reserved for slotserve's own {kind} files")


def is_temp(name: str) -> bool:
    return bool(_TEMP_RE.match(name))


def temp_name(target: str) -> str:
    """A fresh temporary name beside ``target``, within NAME_MAX whatever the target's length."""
    short = target.encode("utf-8")[:150].decode("utf-8", "ignore")  # 150 + host 64 + pid + random < 255
    return f".{short}.tmp-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def temp_writer(name: str) -> tuple[str | None, int] | None:
    """(host, pid) of the process that made temporary file ``name`` (host None in older names), or None."""
    m = _TEMP_RE.match(name)
    return (m["host"], int(m["pid"])) if m else None


def sidecar_name(name: str) -> str | None:
    """The sidecar's name of slot file ``name``, or None when the name is too long to have one."""
    side = name + SIDECAR_SUFFIX
    return side if len(side.encode("utf-8")) <= NAME_MAX else None

"""The sidecar ``<name>.meta.json`` beside each slot file we save: its checksum and the model it came from.

It lets a restore tell a damaged file, or one from another model, before the slot takes it. The
checksum covers what the file means, the decoded token list and every byte after the token payload
(cells and K/V), not the raw bytes: llama-server's own tests rewrite a saved file's token payload
into the legacy plain list and expect it to restore, while any changed token or K/V byte is refused.
Older sidecars carry a checksum of the raw bytes (``crc32``, before that ``sha256``) and still verify.

A save replaces the .bin and its sidecar with two renames, sidecar first, so between them the old
file sits beside the new sidecar: the new sidecar keeps the old one under ``previous``, and a file
matching either is the file its entry describes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass

import numpy as np

from . import background

try:  # ISA-L's CRC-32: the same values as zlib's, 5x faster (6 ms against 30 over a 55 MB slot file)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same checksums, slower
    _crc32 = zlib.crc32

SIDECAR_FORMAT = "slotserve-slot-meta/3"  # /3: content_crc32; /2 had crc32 of the raw bytes; /1 sha256
_hasher = background.executor(1, "slotserve-checksum")  # CRC-32 frees the GIL; file work yields to steps
_INLINE_BYTES = 1 << 20  # ~0.1 ms of CRC-32: less than a hand-off to the hasher thread and back


class SidecarMismatch(ValueError):
    """The file does not match its sidecar (damaged, or saved from another model), or the sidecar is damaged."""


class Crc32:
    """zlib's CRC-32 behind hashlib's update/hexdigest, so either checksum fits the same code."""

    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = _crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


# Sidecar key -> (checksum, covers the content rather than the raw bytes). Saves write content_crc32:
# the sidecar guards against damage, not tampering (whoever can rewrite a file can rewrite its
# sidecar), and for that crc32 serves as well as sha256 while it is far cheaper (see _crc32) over a
# 55 MB slot, time a restore waits for.
CHECKSUMS = {"content_crc32": (Crc32, True), "crc32": (Crc32, False), "sha256": (hashlib.sha256, False)}
SAVE_CHECKSUM = "content_crc32"


def checksum_kind(entry: dict) -> str:
    """Which checksum a sidecar entry records."""
    for kind in CHECKSUMS:
        if kind in entry:
            return kind
    raise SidecarMismatch(f"sidecar is damaged: it has no checksum ({' or '.join(map(repr, CHECKSUMS))})")


class Checksums:
    """The checksums of one slot file, of each kind asked for, computed on a second core.

    Feed the head (raw bytes up to the end of the token payload, and the tokens decoded from it),
    then the rest in order; the jobs run behind the caller's reads or writes. The bytes fed must stay
    unchanged until wait() returns."""

    def __init__(self, kinds):
        self._digests = {kind: CHECKSUMS[kind][0]() for kind in dict.fromkeys(kinds)}
        self._last = None

    def head(self, raw: memoryview, tokens) -> None:
        content = np.asarray(tokens, dtype="<i4").tobytes()
        for kind, digest in self._digests.items():
            self._submit(digest, content if CHECKSUMS[kind][1] else raw)

    def body(self, data: memoryview) -> None:
        for at in range(0, len(data), background.TURN_BYTES):  # a job is a turn between steps
            for digest in self._digests.values():
                self._submit(digest, data[at:at + background.TURN_BYTES])

    def _submit(self, digest, data) -> None:
        if len(data) < _INLINE_BYTES and self._last is None:  # quicker than handing it over (a small slot)
            digest.update(data)
            return
        # one worker runs the jobs in order; only the last needs keeping to wait for them all
        self._last = _hasher.submit(_update, digest, data)

    def wait(self) -> dict[str, str]:
        if self._last is not None:
            self._last.result()
        return {kind: digest.hexdigest() for kind, digest in self._digests.items()}


def _update(digest, data) -> None:  # on the checksum thread: not while a step runs
    with background.turn():
        digest.update(data)


def parse(raw: bytes, name: str) -> dict:
    """A sidecar's JSON object; SidecarMismatch if it is not one."""
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarMismatch(f"sidecar {name!r} is damaged: {e}") from None
    if not isinstance(meta, dict):
        raise SidecarMismatch(f"sidecar {name!r} is damaged: not a JSON object")
    checksum_kind(meta)
    return meta


def render(entry: dict, previous: dict | None) -> bytes:
    """The sidecar's bytes: `entry`, keeping `previous` (the sidecar it replaces) one level deep."""
    if previous is not None:
        entry = {**entry, "previous": {k: v for k, v in previous.items() if k != "previous"}}
    return json.dumps(entry, indent=1, sort_keys=True).encode("utf-8")


def entries(meta: dict | None) -> list[dict]:
    """The file versions a sidecar describes: its own, then the one it replaced, if it kept it."""
    if meta is None:
        return []
    prev = meta.get("previous")
    return [meta] + ([prev] if isinstance(prev, dict) and any(k in prev for k in CHECKSUMS) else [])


@dataclass(frozen=True)
class Expectation:
    """What a slot file must be, by its sidecar: the entries it may match, in order of preference."""
    candidates: list[dict]

    @staticmethod
    def check(meta: dict | None, size: int, fingerprint: str | None) -> "Expectation":
        """The cheap checks, before any byte is read: raw-byte entries give the size, every entry the model."""
        all_entries = entries(meta)
        cands = [e for e in all_entries if CHECKSUMS[checksum_kind(e)][1] or e.get("size") == size]
        if all_entries and not cands:
            if "size" not in meta:
                raise SidecarMismatch("sidecar is damaged: it has no 'size'")
            raise SidecarMismatch(f"file is damaged: it is {size} bytes, its sidecar says {meta['size']}")
        ours = [e for e in cands if fingerprint is None or e.get("model_fingerprint") in (None, fingerprint)]
        if cands and not ours:
            raise SidecarMismatch(f"saved from another model: {meta.get('model_name', '?')!s} (fingerprint "
                                  f"{meta.get('model_fingerprint')}), this server runs fingerprint {fingerprint}")
        return Expectation(ours)

    def kinds(self) -> list[str]:
        return [checksum_kind(e) for e in self.candidates]

    def match(self, digests: dict[str, str]) -> dict | None:
        """The entry the file's checksums match (None: no sidecar); SidecarMismatch if none does."""
        if not self.candidates:
            return None
        for e in self.candidates:
            kind = checksum_kind(e)
            if e[kind] == digests[kind]:
                return e
        kind = checksum_kind(self.candidates[0])
        raise SidecarMismatch(f"file is damaged: {kind} mismatch (sidecar {str(self.candidates[0][kind])[:16]}, "
                              f"file {digests[kind][:16]})")


def logits_entry(logits: np.ndarray, n_tokens: int) -> dict:
    """The sidecar's record of the logits after a cache's n_tokens tokens (exact float32, checksummed)."""
    raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
    return {"n_tokens": n_tokens, "n_vocab": len(logits), "crc32": f"{zlib.crc32(raw):08x}",
            "float32_base64": base64.b64encode(raw).decode("ascii")}


def logits_from_entry(entry, n_tokens: int, n_vocab: int) -> np.ndarray:
    """The logits a sidecar entry records for a file of n_tokens tokens; ValueError says why not."""
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    if entry.get("n_tokens") != n_tokens:
        raise ValueError(f"they follow token {entry.get('n_tokens')}, the file has {n_tokens}")
    if entry.get("n_vocab") != n_vocab:
        raise ValueError(f"they cover {entry.get('n_vocab')} tokens, the model's vocabulary has {n_vocab}")
    try:
        raw = base64.b64decode(entry.get("float32_base64", ""), validate=True)
    except (TypeError, ValueError):
        raise ValueError("their data is not base64") from None
    if len(raw) != 4 * n_vocab or f"{zlib.crc32(raw):08x}" != entry.get("crc32"):
        raise ValueError("their data is damaged (size or crc32 mismatch)")
    return np.frombuffer(raw, "<f4").astype(np.float32)

"""The slot save directory (``--slot-save-path``): the only code that touches slot files on disk.

Names come from HTTP clients, so every name is checked with llama.cpp's rules (fs_validate_filename)
and every path is confined to the directory, symlinks included. Writes are atomic: a reader sees the
old file or the new one, never a torn one, and a failed save leaves the previous file as it was.

Each file we save gets a sidecar ``<name>.meta.json`` (checksum, size, model fingerprint) so a restore
can tell a damaged file or one from another model before parsing it. Files without a sidecar, such
as those written by llama-server itself, are accepted as they are.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

SIDECAR_SUFFIX = ".meta.json"
_CHUNK = 8 << 20  # reads and writes go by chunks so hashing can overlap them
_hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slotserve-checksum")  # both free the GIL
NAME_MAX = 255  # bytes, the common Linux file-system limit llama.cpp also uses
T = TypeVar("T")
_TEMP_RE = re.compile(r"^\..*\.tmp-\d+-[0-9a-f]+$", re.DOTALL)

# code points llama.cpp refuses besides controls, with what they would be mistaken for
_LOOKALIKES = {0xFF0E: "'.' (FULLWIDTH FULL STOP)", 0x2215: "'/' (DIVISION SLASH)",
               0x2216: "'\\' (SET MINUS)", 0xFFFD: "REPLACEMENT CHARACTER", 0xFEFF: "BYTE ORDER MARK"}
_ILLEGAL = set(':*?"<>|')


class InvalidFilename(ValueError):
    """A slot file name a client may not use; the message says which rule it breaks."""


class UnsafePath(InvalidFilename):
    """The name is well formed but its path would leave the save directory (e.g. a planted symlink)."""


class SlotFileNotFound(FileNotFoundError):
    """No saved slot file has this name."""


class SidecarMismatch(ValueError):
    """The file does not match its sidecar: damaged, or saved from another model."""


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


class Crc32:
    """zlib's CRC-32 behind hashlib's update/hexdigest, so either checksum fits the same code."""

    def __init__(self):
        self.value = 0

    def update(self, data) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


# Sidecar key -> checksum. Saves write crc32: the sidecar guards against damage, not tampering (whoever
# can rewrite a file can rewrite its sidecar), and for that crc32 serves as well as sha256 while taking
# 13 ms instead of 31 ms over a 55 MB slot, time a restore waits for. Older sidecars carry sha256.
CHECKSUMS = {"crc32": Crc32, "sha256": hashlib.sha256}
SAVE_CHECKSUM = "crc32"


def checksum_kind(meta: dict) -> str:
    """Which checksum a sidecar records."""
    for kind in CHECKSUMS:
        if kind in meta:
            return kind
    raise SidecarMismatch(f"sidecar is damaged: it has no checksum ({' or '.join(map(repr, CHECKSUMS))})")


@dataclass(frozen=True)
class SavedFile:
    name: str
    size: int
    mtime: float
    has_sidecar: bool


def check_identity(data: bytes, meta: dict | None, *, fingerprint: str | None) -> None:
    """The sidecar checks that need no checksum: the size, and the model the file was saved from."""
    if meta is None:
        return
    if "size" not in meta:
        raise SidecarMismatch("sidecar is damaged: it has no 'size'")
    if meta["size"] != len(data):
        raise SidecarMismatch(f"file is damaged: it is {len(data)} bytes, its sidecar says {meta['size']}")
    saved = meta.get("model_fingerprint")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise SidecarMismatch(f"saved from another model: {meta.get('model_name', '?')!s} "
                              f"(fingerprint {saved}), this server runs fingerprint {fingerprint}")


def verify_sidecar(data: bytes, meta: dict | None, *, fingerprint: str | None, digest: str | None = None) -> None:
    """Raise SidecarMismatch if ``data`` is not what the sidecar recorded, or came from another model.

    ``meta`` None (no sidecar: a llama-server file, or one saved with a very long name) passes.
    ``digest``: the checksum of ``data`` the sidecar records (checksum_kind), when the caller has it.
    """
    if meta is None:
        return
    kind = checksum_kind(meta)
    check_identity(data, meta, fingerprint=fingerprint)
    if digest is None:
        checksum = CHECKSUMS[kind]()
        checksum.update(data)
        digest = checksum.hexdigest()
    check_digest(meta, digest)


def check_digest(meta: dict | None, digest: str | None) -> None:
    """The check that needs the checksum: ``digest`` of the data against what the sidecar recorded."""
    if meta is None:
        return
    kind = checksum_kind(meta)
    if meta[kind] != digest:
        raise SidecarMismatch(f"file is damaged: {kind} mismatch (sidecar {str(meta[kind])[:16]}, "
                              f"file {str(digest)[:16]})")


class SaveDir:
    def __init__(self, root: Path | str):
        Path(root).mkdir(parents=True, exist_ok=True)
        self._buffer = bytearray()
        self.root = Path(os.path.realpath(root))
        # Temp files only exist while a save runs, and saves run on the engine thread of the one
        # server that owns this directory; any present at startup were left by a save that was
        # killed, can never be completed, and would otherwise pile up. (A second server sharing the
        # directory would at worst see one in-flight save fail, never a damaged file.)
        for entry in os.scandir(self.root):
            if _TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass

    def reserve(self, n_bytes: int) -> None:
        """Allocate the read buffer now: a restore into fresh pages pays for them (on the first restore
        of the 110M model's 2,048-token slot, 430 ms instead of 45), and the first restore after a
        start is often the one a user waits for."""
        if len(self._buffer) < n_bytes:
            self._buffer = bytearray(n_bytes)  # zero-filled, so every page is touched here

    # ------------------------------------------------------------------ paths

    def path_for(self, name: str) -> Path:
        """The path of slot file ``name``, refusing anything that could land outside the directory."""
        validate_filename(name)
        if name.endswith(SIDECAR_SUFFIX) or _TEMP_RE.match(name):
            raise InvalidFilename(f"filename {name!r} is reserved for slotserve's own "
                                  f"{'sidecar' if name.endswith(SIDECAR_SUFFIX) else 'temporary'} files")
        return self._confined(name)

    def _confined(self, name: str) -> Path:
        path = self.root / name
        # a symlink is refused even when it points inside: a slot name must be a plain file here
        if path.is_symlink():
            raise UnsafePath(f"{name!r} is a symbolic link in the save directory; refusing to follow it")
        if Path(os.path.realpath(path)).parent != self.root:
            raise UnsafePath(f"{name!r} resolves outside the save directory")
        return path

    def _sidecar(self, name: str) -> Path | None:
        """The sidecar path, or None when the name is too long to have one."""
        side = name + SIDECAR_SUFFIX
        if len(side.encode("utf-8")) > NAME_MAX:
            return None
        return self._confined(side)

    # ------------------------------------------------------------------ raw files

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data`` atomically and durably; on failure the old file is untouched."""
        target = self.path_for(name)
        self._write_atomic_path(target, data)

    def _write_atomic_path(self, target: Path, data: bytes) -> str:
        """Write `data` as `target` atomically; returns its SAVE_CHECKSUM, computed chunk by chunk on
        a second core while the next chunk is written."""
        # keep the temp name within NAME_MAX whatever the target's length
        short = target.name.encode("utf-8")[:200].decode("utf-8", "ignore")
        tmp = self.root / f".{short}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f, memoryview(data) as view:
                digest, pending = CHECKSUMS[SAVE_CHECKSUM](), None
                for at in range(0, len(view), _CHUNK):
                    chunk = view[at:at + _CHUNK]
                    if pending is not None:
                        pending.result()
                    pending = _hasher.submit(digest.update, chunk)
                    written = 0
                    while written < len(chunk):  # a raw write may take only part of it
                        written += f.write(chunk[written:])
                if pending is not None:
                    pending.result()
                os.fsync(f.fileno())
            # rename replaces a symlink at target rather than following it, so even a symlink
            # planted after path_for's check cannot redirect the write outside the directory
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self._fsync_dir()
        return digest.hexdigest()

    def _fsync_dir(self) -> None:
        # without this a crash after rename may lose the directory entry, i.e. the whole save
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def read(self, name: str) -> bytes:
        return self._read_path(self.path_for(name), name)

    def _open_regular(self, path: Path, name: str) -> int:
        try:
            # O_NOFOLLOW closes the gap between path_for's symlink check and the open
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SlotFileNotFound(f"no saved slot file named {name!r}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(f"{name!r} is a symbolic link in the save directory; refusing to follow it") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidFilename(f"{name!r} in the save directory is not a regular file")
        return fd

    def _read_path(self, path: Path, name: str) -> bytes:
        with os.fdopen(self._open_regular(path, name), "rb") as f:
            return f.read()

    def _read_checksummed(self, path: Path, name: str, kind: str | None) -> tuple[memoryview, Callable[[], str | None]]:
        """The file's bytes, and a function that waits for and returns their checksum of `kind` (None:
        no checksum). The checksum runs on a second core, a chunk behind the reads, and may still be
        running when this returns, so the caller can work on the bytes meanwhile; it must call the
        function before the next read, which reuses the buffer (fresh pages would cost as much as
        the copy). Restores run one at a time on the engine thread, which suits both."""
        with os.fdopen(self._open_regular(path, name), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            view, done, last = memoryview(self._buffer), 0, None
            digest = CHECKSUMS[kind]() if kind else None
            while done < size:
                n = f.readinto(view[done:done + _CHUNK])
                if not n:  # the file shrank while we read it
                    break
                if digest is not None:  # one worker: the chunks are checksummed in order
                    last = _hasher.submit(digest.update, view[done:done + n])
                done += n

        def checksum() -> str | None:
            if last is not None:
                last.result()  # the last job ends after every earlier one
            return digest.hexdigest() if digest is not None else None
        return view[:done], checksum

    def delete(self, name: str) -> None:
        """Remove a saved file and its sidecar."""
        path = self.path_for(name)
        if not path.exists():
            raise SlotFileNotFound(f"no saved slot file named {name!r}")
        # sidecar first: an interrupted delete then leaves a plain file, never a sidecar describing
        # a file that is gone (which a later llama-server file of that name would fail against)
        self._drop_sidecar(name)
        os.unlink(path)
        self._fsync_dir()

    def _drop_sidecar(self, name: str) -> Path | None:
        """Remove ``name``'s sidecar if there is one; returns its path (None: the name is too long to have one)."""
        side = self._sidecar(name)
        if side is not None:
            try:
                os.unlink(side)
            except FileNotFoundError:
                pass
        return side

    def list(self) -> list[SavedFile]:
        """Saved slot files, by name; temp files, sidecars and anything not a plain valid name skipped."""
        out = []
        for entry in os.scandir(self.root):
            name = entry.name
            if name.endswith(SIDECAR_SUFFIX) or _TEMP_RE.match(name):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                validate_filename(name)
            except InvalidFilename:
                continue
            st = entry.stat(follow_symlinks=False)
            side = self._sidecar(name)
            out.append(SavedFile(name, st.st_size, st.st_mtime, side is not None and side.is_file()))
        return sorted(out, key=lambda f: f.name)

    # ------------------------------------------------------------------ slot files with sidecars

    def write_slot(self, name: str, data: bytes, meta: dict) -> dict:
        """Save ``data`` as ``name`` with a sidecar recording ``meta`` plus checksum and size; returns it.

        Order matters for crashes: the old sidecar goes first, then the file, then the new sidecar,
        so at every instant a sidecar present describes the file present (or there is none).
        """
        target = self.path_for(name)
        side = self._drop_sidecar(name)
        digest = self._write_atomic_path(target, data)
        full = {**meta, SAVE_CHECKSUM: digest, "size": len(data)}
        if side is not None:
            self._write_atomic_path(side, json.dumps(full, indent=1, sort_keys=True).encode("utf-8"))
        return full

    def read_slot(self, name: str) -> tuple[bytes, dict | None]:
        """The file's bytes and its sidecar (None if it has none). Check them with verify_sidecar."""
        data = self.read(name)
        return data, self.read_sidecar(name)

    def read_slot_checked(self, name: str, fingerprint: str | None,
                          consume: Callable[[memoryview, dict | None], T]) -> T:
        """consume(bytes of slot file `name`, its sidecar or None), returned only once the bytes are
        verified against the sidecar (when there is one): consume runs while the checksum is still
        being computed, so it must write only to scratch space, which a SidecarMismatch then tells the
        caller to drop. The bytes are valid until the next call."""
        meta = self.read_sidecar(name)
        data, checksum = self._read_checksummed(self.path_for(name), name, checksum_kind(meta) if meta else None)
        try:
            check_identity(data, meta, fingerprint=fingerprint)  # another model's file: not worth decoding
        except SidecarMismatch:
            checksum()  # the checksum job reads the buffer: let it end before the next read may refill it
            raise
        try:
            result = consume(data, meta)
        except Exception:
            check_digest(meta, checksum())  # a damaged file explains a failure better than what consume made of it
            raise
        check_digest(meta, checksum())
        return result

    def read_sidecar(self, name: str) -> dict | None:
        """The sidecar of slot file ``name``, or None when it has none; SidecarMismatch if unreadable."""
        self.path_for(name)
        side = self._sidecar(name)
        if side is None:
            return None
        try:
            raw = self._read_path(side, name + SIDECAR_SUFFIX)
        except SlotFileNotFound:
            return None
        try:
            meta = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SidecarMismatch(f"sidecar {name + SIDECAR_SUFFIX!r} is damaged: {e}") from None
        if not isinstance(meta, dict):
            raise SidecarMismatch(f"sidecar {name + SIDECAR_SUFFIX!r} is damaged: not a JSON object")
        return meta

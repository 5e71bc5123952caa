"""Save and restore slot caches: the KV cache, the .bin format, its sidecar and the save directory put together.

Restore is the one verified read path, and a transaction: the file's size and head are checked
before its bulk is read, its checksum is computed on a second core as it is read, and the file is
copied into a scratch cache (while the checksum ends) that becomes the slot's cache only once all of
it checked out (the engine swaps the two), so a bad file leaves the slot exactly as it was.

The sidecar also keeps the cache's logits (the output after its last token) when the cache has them,
as llama.cpp's whole-context state files do: the same prompt after a restore then gets its first
token without a forward pass. The .bin stays exactly llama-server's format.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from . import background, sidecar
from .cache import KV_TYPES, KVCache
from .filenames import InvalidFilename
from .parallel import PendingCopies
from .savedir import SaveDir
from .scratch import ScratchBuffer
from .sidecar import SAVE_CHECKSUM, SIDECAR_FORMAT, Checksums, Expectation, SidecarMismatch
from .slotfile import (
    SlotFileError, SlotState, decode_head, decode_slot_file, encode_headers, encode_into, encoded_size, head_size,
    max_file_size, payload_end,
)

log = logging.getLogger("slotserve.kvcache")
T = TypeVar("T")
_CHUNK = background.TURN_BYTES  # bytes per read: its checksum runs while the next is read


@dataclass
class SaveSnapshot:
    """A save's file, encoded out of the slot's cache: nothing in it refers to the live cache once `copies`
    is empty. The engine runs the copies (all at once, or a slice between steps), the writer thread
    checksums and writes the bytes."""
    filename: str
    data: memoryview  # the whole .bin, headers written, K/V as `copies` fill them
    tokens: list[int]
    head_end: int  # where the token payload ends (the checksum covers the tokens, then the rest)
    entry: dict  # the sidecar's fields, checksum and size to come
    buffer: bytearray  # what `data` views, to be reused once written
    copies: PendingCopies  # (rows in `data`, the cache's stored rows) still to copy, one per layer


@dataclass(frozen=True)
class ModelIdentity:
    """What a slot file must agree with to be restored into this server's slots."""
    name: str
    fingerprint: str
    n_layer: int
    n_embd_kv: int
    n_vocab: int


def _read_into(f, view: memoryview) -> int:
    """Fill `view` from the file as far as it goes; returns the bytes read (fewer only at its end)."""
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            break
        done += n
    return done


class SlotStore:
    def __init__(self, savedir: SaveDir, model: ModelIdentity, n_stream: int = 1):
        # llama.cpp refuses a file whose stream count differs from its own: 1 with a unified KV cache,
        # else one per slot. Writing the layout llama-server would use for the same -np keeps our
        # files restorable there.
        self.dir, self.model, self.n_stream = savedir, model, n_stream
        # writes and reads run one at a time on the writer thread (writer.py); each has its own buffer
        self._encoded = ScratchBuffer("slot save")
        self._read = ScratchBuffer("slot restore")

    def _max_size(self, n_ctx: int, itemsize: int = 4) -> int:
        return max_file_size(n_ctx, self.model.n_layer, self.model.n_embd_kv, self.model.n_embd_kv, itemsize)

    def file_size_for(self, cache: KVCache) -> int:
        """The size of a file that fills `cache`."""
        return self._max_size(cache.n_ctx, np.dtype(KV_TYPES[cache.kv_type]).itemsize)

    def reserve(self, cache: KVCache) -> None:
        """Make room now for reading a file that fills `cache`: the first restore after a start is often
        the one a user waits for."""
        self._read.reserve(self.file_size_for(cache))

    def save(self, cache: KVCache, filename: str, id_slot: int = 0) -> dict:
        """Write the slot's cache to `filename` with its sidecar, replacing both as one unit."""
        snap = self.snapshot(cache, filename, id_slot)
        snap.copies.copy()
        return self.write_snapshot(snap)

    def snapshot(self, cache: KVCache, filename: str, id_slot: int = 0,
                 buffer: bytearray | None = None) -> SaveSnapshot:
        """A save of `cache`, its K/V still to be copied (its `copies`) before the cache changes: the
        engine copies them between steps, straight into the file's bytes (an f16 cache's float16 rows as
        they are), and the writer thread checksums and writes the file while the cache goes on.
        buffer: memory for the file, used when large enough (else a larger one is allocated)."""
        self.dir.path_for(filename)  # a bad name is refused before any work
        state = self._state(cache, id_slot)
        size = encoded_size(state)
        if buffer is None or len(buffer) < size:
            buffer = bytearray(size)
        data = memoryview(buffer)[:size]
        copies = encode_headers(state, data)  # views of the live cache: the snapshot's copies use them up
        return SaveSnapshot(filename, data, state.tokens, head_size(state), self._entry(cache), buffer,
                            PendingCopies(copies))

    def _state(self, cache: KVCache, id_slot: int) -> SlotState:
        state = cache.export_state()
        if self.n_stream > 1:
            state.n_stream, state.stream, state.seq_id = self.n_stream, id_slot, id_slot
        return state

    def _entry(self, cache: KVCache) -> dict:
        """The sidecar's fields for a save of `cache` (its logits copied, as bytes)."""
        entry = {
            "format": SIDECAR_FORMAT,
            "model_fingerprint": self.model.fingerprint,
            "model_name": self.model.name,
            "n_tokens": cache.n_past,
            "kv_type": cache.kv_type,
        }
        if cache.logits is not None and cache.n_past:
            entry["logits"] = sidecar.logits_entry(cache.logits, cache.n_past)
        return entry

    def write_snapshot(self, snap: SaveSnapshot) -> dict:
        """Write a copied snapshot out (on the writer thread); {"n_saved": tokens, "n_written": bytes}."""
        self._write_encoded(snap.data, snap.head_end, snap.tokens, snap.filename, snap.entry)
        return {"n_saved": len(snap.tokens), "n_written": len(snap.data)}

    def write_state(self, state: SlotState, filename: str, entry: dict) -> int:
        """Encode `state` into `filename` with a sidecar of `entry` plus the file's checksum and size,
        replacing both as one unit; returns the .bin's size."""
        with self._encoded.lend(encoded_size(state)) as data:
            encode_into(state, data)
            self._write_encoded(data, head_size(state), state.tokens, filename, entry)
            return len(data)

    def _write_encoded(self, data: memoryview, head_end: int, tokens, filename: str, entry: dict) -> None:
        sums = Checksums([SAVE_CHECKSUM])
        try:
            sums.head(data[:head_end], tokens)
            sums.body(data[head_end:])  # runs on the second core while the file is written

            def render(old: dict | None) -> bytes:
                return sidecar.render({**entry, SAVE_CHECKSUM: sums.wait()[SAVE_CHECKSUM], "size": len(data)}, old)
            self.dir.write_pair(filename, data, render)
        finally:
            sums.wait()  # the checksum reads the buffer: it must end before the buffer is handed on

    def restore(self, into: KVCache, filename: str) -> dict:
        """Fill the scratch cache `into` from the file (on the writer thread: the widening copies take
        turns with the engine's steps), or raise (`into` then holds garbage)."""
        def consume(state: SlotState) -> int:
            into.import_state(state)  # f32 files into an f16 cache: rounded here
            return state.n_tokens

        n_tokens, entry, n_read = self.read_state(filename, into.n_ctx, consume)
        if entry and "logits" in entry:
            try:
                into.logits = sidecar.logits_from_entry(entry["logits"], n_tokens, self.model.n_vocab)
            except ValueError as exc:  # they only save one token's forward: restore the cache without them
                log.warning("slot file '%s': ignoring the logits in its sidecar: %s", filename, exc)
        return {"n_restored": n_tokens, "n_read": n_read}

    def read_state(self, filename: str, n_ctx: int, consume: Callable[[SlotState], T]) -> tuple[T, dict | None, int]:
        """The one verified read: size and head checked before the bulk is read, then `consume(state)`
        runs while the checksum finishes on the other core (the state views the read buffer: consume
        copies what it keeps). Returns (what consume returned, the sidecar entry the file matched or None,
        bytes read); raises when anything does not check out, and then what consume made must be discarded."""
        meta, fd, size = self.dir.open_pair(filename)  # a pair no other save's renames came between
        with os.fdopen(fd, "rb", buffering=0) as f:
            limit = self._max_size(n_ctx)
            if size > limit:  # before reading a byte: a huge file would stall every slot and keep its memory
                raise SlotFileError(f"file is {size} bytes, more than a slot of {n_ctx} tokens can hold "
                                    f"({limit} bytes); not reading it")
            expect = Expectation.check(meta, size, self.model.fingerprint)
            with self._read.lend(size) as view:
                sums = Checksums(expect.kinds())
                try:
                    return self._load(f, view, sums, expect, n_ctx, consume)
                finally:
                    sums.wait()  # the checksum reads the buffer: it must end before the buffer is handed on

    def _load(self, f, view: memoryview, sums: Checksums, expect: Expectation, n_ctx: int,
              consume: Callable[[SlotState], T]) -> tuple[T, dict | None, int]:
        got = _read_into(f, view[:min(len(view), 12)])
        end = min(payload_end(view[:got]), len(view))
        got += _read_into(f, view[got:end])
        tokens, end = decode_head(view[:got], n_ctx_slot=n_ctx, n_vocab=self.model.n_vocab)
        sums.head(view[:end], tokens)
        while got < len(view):
            with background.turn():  # not while a step runs (the copy out of the page cache)
                n = _read_into(f, view[got:got + _CHUNK])
            if not n:  # the file shrank while we read it: decoding says where it ends
                break
            sums.body(view[got:got + n])
            got += n
        try:  # decoding and widening overlap the checksum
            state = decode_slot_file(view[:got], n_layer=self.model.n_layer, n_embd_k_gqa=self.model.n_embd_kv,
                                     n_embd_v_gqa=self.model.n_embd_kv, n_ctx_slot=n_ctx,
                                     n_vocab=self.model.n_vocab)
            consumed = consume(state)
        except Exception:
            expect.match(sums.wait())  # a damaged file explains a failure better than what decoding made of it
            raise
        return consumed, expect.match(sums.wait()), got

    def list_files(self) -> list[dict]:
        """The save directory's files, with what their sidecars say about them; a damaged sidecar is
        reported in "damaged", never raised."""
        out = []
        for f in self.dir.list():
            meta, damaged = None, None
            if f.has_sidecar:
                try:
                    meta = self.dir.read_sidecar(f.name)
                except (SidecarMismatch, InvalidFilename, OSError) as exc:
                    damaged = str(exc)
            out.append({
                "filename": f.name,
                "size": f.size,
                "modified": f.mtime,
                "n_tokens": meta.get("n_tokens") if meta else None,
                "kv_type": meta.get("kv_type") if meta else None,
                "model": meta.get("model_name") if meta else None,
                # None: no sidecar (e.g. written by llama-server) or a damaged one, so no way to tell
                "matches_model": (meta.get("model_fingerprint") == self.model.fingerprint) if meta else None,
                "damaged": damaged,
            })
        return out

    def delete(self, filename: str) -> None:
        self.dir.delete(filename)

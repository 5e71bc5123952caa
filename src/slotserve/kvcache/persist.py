"""Save and restore slot caches: the KV cache, the .bin format and the save directory put together.

Restore is a transaction: the file is decoded into a scratch cache while its checksum is computed,
and only a fully validated and verified file becomes the slot's cache (the engine swaps the two),
so a bad file leaves the slot exactly as it was.

The sidecar also keeps the cache's logits (the output after its last token) when the cache has them,
as llama.cpp's whole-context state files do: the same prompt after a restore then gets its first
token without a forward pass. The .bin stays exactly llama-server's format.
"""
from __future__ import annotations

import base64
import logging
import zlib
from dataclasses import dataclass

import numpy as np

from .cache import KV_TYPES, KVCache
from .savedir import SaveDir, validate_filename
from .slotfile import decode_slot_file, encode_slot_file

SIDECAR_FORMAT = "slotserve-slot-meta/2"  # /2: a crc32 checksum; /1 had sha256 (still read)
log = logging.getLogger("slotserve.kvcache")


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


@dataclass(frozen=True)
class ModelIdentity:
    """What a slot file must agree with to be restored into this server's slots."""
    name: str
    fingerprint: str
    n_layer: int
    n_embd_kv: int
    n_vocab: int


class SlotStore:
    def __init__(self, savedir: SaveDir, model: ModelIdentity, n_stream: int = 1):
        # llama.cpp refuses a file whose stream count differs from its own: 1 with a unified KV cache,
        # else one per slot. Writing the layout llama-server would use for the same -np keeps our
        # files restorable there.
        self.dir, self.model, self.n_stream = savedir, model, n_stream
        self._buffer = bytearray()  # reused by every save: see encode_slot_file

    def reserve(self, cache: KVCache) -> None:
        """Make room for reading a file that fills `cache` (its K/V rows plus token and cell entries)."""
        row_bytes = 2 * self.model.n_layer * self.model.n_embd_kv * np.dtype(KV_TYPES[cache.kv_type]).itemsize
        self.dir.reserve(cache.n_ctx * (row_bytes + 64) + 4096)

    def save(self, cache: KVCache, filename: str, id_slot: int = 0) -> dict:
        """Write the slot's cache to `filename` atomically, with its sidecar."""
        validate_filename(filename)
        state = cache.export_state()
        if self.n_stream > 1:
            state.n_stream, state.stream, state.seq_id = self.n_stream, id_slot, id_slot
        meta = {
            "format": SIDECAR_FORMAT,
            "model_fingerprint": self.model.fingerprint,
            "model_name": self.model.name,
            "n_tokens": cache.n_past,
            "kv_type": cache.kv_type,
        }
        if cache.logits is not None and cache.n_past:
            meta["logits"] = logits_entry(cache.logits, cache.n_past)
        with encode_slot_file(state, self._buffer) as data:  # the view must go before the buffer may grow
            self.dir.write_slot(filename, data, meta)
            return {"n_saved": cache.n_past, "n_written": len(data)}

    def restore(self, into: KVCache, filename: str) -> dict:
        """Fill the scratch cache `into` from the file, or raise (`into` then holds garbage).

        Decoding and widening into `into` overlap the checksum; only a verified file returns."""
        def load(data, meta: dict | None) -> dict:
            state = decode_slot_file(data, n_layer=self.model.n_layer, n_embd_k_gqa=self.model.n_embd_kv,
                                     n_embd_v_gqa=self.model.n_embd_kv, n_ctx_slot=into.n_ctx,
                                     n_vocab=self.model.n_vocab)
            into.import_state(state)  # converts f16 <-> f32 on its way into the cache
            if meta and "logits" in meta:
                try:
                    into.logits = logits_from_entry(meta["logits"], state.n_tokens, self.model.n_vocab)
                except ValueError as exc:  # they only save one token's forward: restore the cache without them
                    log.warning("slot file '%s': ignoring the logits in its sidecar: %s", filename, exc)
            return {"n_restored": len(state.tokens), "n_read": len(data)}

        return self.dir.read_slot_checked(filename, self.model.fingerprint, load)

    def list_files(self) -> list[dict]:
        """The save directory's files, with what their sidecars say about them."""
        out = []
        for f in self.dir.list():
            meta = self.dir.read_sidecar(f.name) if f.has_sidecar else None
            out.append({
                "filename": f.name,
                "size": f.size,
                "modified": f.mtime,
                "n_tokens": meta.get("n_tokens") if meta else None,
                "kv_type": meta.get("kv_type") if meta else None,
                "model": meta.get("model_name") if meta else None,
                # None: no sidecar (e.g. written by llama-server), so no way to tell
                "matches_model": (meta.get("model_fingerprint") == self.model.fingerprint) if meta else None,
            })
        return out

    def delete(self, filename: str) -> None:
        self.dir.delete(filename)

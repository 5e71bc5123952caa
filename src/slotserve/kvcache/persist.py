"""Save and restore slot caches: the KV cache, the .bin format and the save directory put together.

Restore is a transaction: the file is decoded into a scratch cache while its checksum is computed,
and only a fully validated and verified file becomes the slot's cache (the engine swaps the two),
so a bad file leaves the slot exactly as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache import KV_TYPES, KVCache
from .savedir import SaveDir, validate_filename
from .slotfile import decode_slot_file, encode_slot_file

SIDECAR_FORMAT = "slotserve-slot-meta/2"  # /2: a crc32 checksum; /1 had sha256 (still read)


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
        with encode_slot_file(state, self._buffer) as data:  # the view must go before the buffer may grow
            self.dir.write_slot(filename, data, {
                "format": SIDECAR_FORMAT,
                "model_fingerprint": self.model.fingerprint,
                "model_name": self.model.name,
                "n_tokens": cache.n_past,
                "kv_type": cache.kv_type,
            })
            return {"n_saved": cache.n_past, "n_written": len(data)}

    def restore(self, into: KVCache, filename: str) -> dict:
        """Fill the scratch cache `into` from the file, or raise (`into` then holds garbage).

        Decoding and widening into `into` overlap the checksum; only a verified file returns."""
        def load(data) -> dict:
            state = decode_slot_file(data, n_layer=self.model.n_layer, n_embd_k_gqa=self.model.n_embd_kv,
                                     n_embd_v_gqa=self.model.n_embd_kv, n_ctx_slot=into.n_ctx,
                                     n_vocab=self.model.n_vocab)
            into.import_state(state)  # converts f16 <-> f32 on its way into the cache
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

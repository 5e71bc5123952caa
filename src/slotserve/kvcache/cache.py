"""One slot's KV cache: preallocated K/V for every layer plus the tokens they encode."""
from __future__ import annotations

import numpy as np

from .parallel import copy_in_parallel
from .slotfile import SlotState

KV_TYPES = {"f16": np.float16, "f32": np.float32}


class KVCache:
    """K and V are stored as (n_layer, n_ctx, n_head_kv * head_dim) float32 arrays: a row per token,
    the layout of llama.cpp's cache and of slot files, so saving and restoring copy rows as they are.

    With kv_type "f16" every value is rounded to float16 as it is written, so the cache holds exactly
    what llama.cpp's f16 cache holds; keeping the rounded values in float32 spares the attention a
    conversion of the whole cache at every step. Exports and slot files carry the kv_type's dtype.
    An f16 cache also keeps its rows as float16 (`stored`), written beside the float32 ones: a save
    or a prompt-cache store then copies them as they are, where narrowing 110 MB of float32 rows took
    10-25 ms on two threads (the 110M model's 1,500-token slot), as long as llama-server's whole save.
    That costs half the float32 rows' memory again. `k` and `v` are read-only views, so no code can
    change the float32 rows without the float16 ones: every change goes through a method here.

    `logits` is the model's output after the last cached token, when known: a prompt that is exactly
    the cached tokens then needs no forward pass for its first token (llama-server evaluates the last
    token again). Every change to the tokens drops it, except an append that brings its own.
    """

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, kv_type: str = "f16"):
        if kv_type not in KV_TYPES:
            raise ValueError(f"KV cache type must be one of {sorted(KV_TYPES)}, not '{kv_type}'")
        self.kv_type = kv_type
        self.n_ctx = n_ctx
        self.n_head_kv, self.head_dim = n_head_kv, head_dim
        shape = (n_layer, n_ctx, n_head_kv * head_dim)
        # np.full, not np.zeros: it writes every page now, so the first requests do not pay the
        # page faults of a cache that grows under them (zeros would be mapped lazily)
        self._k, self._v = np.full(shape, 0, np.float32), np.full(shape, 0, np.float32)
        if kv_type == "f16":
            self._k16, self._v16 = np.full(shape, 0, np.float16), np.full(shape, 0, np.float16)
            self._rows = [self._k, self._v, self._k16, self._v16]
        else:  # the float32 rows are the stored ones
            self._k16, self._v16 = self._k, self._v
            self._rows = [self._k, self._v]
        self.k, self.v = _read_only(self._k), _read_only(self._v)
        self.tokens: list[int] = []
        self.logits: np.ndarray | None = None

    @property
    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """K and V in the kv_type's dtype, as slot files and the prompt cache keep them (read-only)."""
        return _read_only(self._k16), _read_only(self._v16)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def n_free(self) -> int:
        return self.n_ctx - len(self.tokens)

    def write(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store K/V rows of shape (T, n_head_kv, head_dim) for positions pos .. pos+T-1."""
        end = pos + k.shape[0]
        if end > self.n_ctx:
            raise ValueError(f"KV cache overflow: position {end - 1} >= n_ctx {self.n_ctx}")
        k, v = k.reshape(k.shape[0], -1), v.reshape(v.shape[0], -1)
        if self.kv_type == "f16":
            k, v = k.astype(np.float16), v.astype(np.float16)
            self._k16[layer, pos:end], self._v16[layer, pos:end] = k, v
        self._k[layer, pos:end], self._v[layer, pos:end] = k, v

    def rewrite_keys(self, start: int, keys: np.ndarray) -> None:
        """Replace the K rows of every layer from position `start` on with `keys` (n_layer, n, n_embd_kv),
        rounded to the kv_type (a context shift's re-rotated keys)."""
        end = start + keys.shape[1]
        if self.kv_type == "f16":
            keys = keys.astype(np.float16)
            self._k16[:, start:end] = keys
        self._k[:, start:end] = keys

    def row_copies(self, layer: int, lo: int, hi: int, k: np.ndarray, v: np.ndarray
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (destination, source) pairs that put rows lo..hi-1 of one layer from K/V rows `k` and `v`
        in the kv_type's dtype (copy_in_parallel runs them; the caller then sets the tokens)."""
        pairs = [(self._k[layer, lo:hi], k), (self._v[layer, lo:hi], v)]
        if self.kv_type == "f16":
            pairs += [(self._k16[layer, lo:hi], k), (self._v16[layer, lo:hi], v)]
        return pairs

    def view(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of the first n positions, each (n_head_kv, n, head_dim), no copy."""
        shape = (n, self.n_head_kv, self.head_dim)
        return (self.k[layer, :n].reshape(shape).transpose(1, 0, 2),
                self.v[layer, :n].reshape(shape).transpose(1, 0, 2))

    def append(self, tokens: list[int], logits: np.ndarray | None) -> None:
        """Record tokens whose K/V rows were just written; `logits`: the output after the last of them."""
        self.tokens.extend(tokens)
        self.logits = logits

    def truncate(self, n: int) -> None:
        """Keep the first n tokens; the arrays beyond them are simply overwritten later."""
        if n < len(self.tokens):
            del self.tokens[n:]
            self.logits = None

    def discard(self, start: int, n: int) -> None:
        """Drop n tokens from position `start` on; the ones after move down by n (their K still carries
        the old positions' rotation: the model re-rotates it)."""
        end = self.n_past
        for rows in self._rows:
            rows[:, start:end - n] = rows[:, start + n:end].copy()
        del self.tokens[start:start + n]
        self.logits = None  # the tokens kept moved to other positions: their output would differ

    def clear(self) -> None:
        self.tokens.clear()
        self.logits = None

    def export_state(self) -> SlotState:
        """The cache as a slot-file state: views of the rows in the kv_type's dtype (an f16 cache's float16
        rows, see `stored`)."""
        n = self.n_past
        k, v = self.stored
        return SlotState(tokens=list(self.tokens), k=[rows[:n] for rows in k], v=[rows[:n] for rows in v],
                         kv_dtype=np.dtype(KV_TYPES[self.kv_type]))

    def import_state(self, state: SlotState) -> None:
        """Replace the whole cache; the caller has validated shapes against this cache already.

        Values from an f32 file are rounded on the way in when this cache is f16. The file holds no
        logits: the caller sets them when it has them."""
        n = len(state.tokens)
        pairs = []
        for layer, (k, v) in enumerate(zip(state.k, state.v)):
            if self.kv_type == "f16" and k.dtype != np.float16:
                k, v = k.astype(np.float16), v.astype(np.float16)
            pairs += self.row_copies(layer, 0, n, k, v)
        copy_in_parallel(pairs)
        self.tokens = list(state.tokens)
        self.logits = None


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view

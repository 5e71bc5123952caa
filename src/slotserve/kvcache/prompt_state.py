"""Stored prompt states as the cache tiers keep them: K/V rows by token run, and how they go back
into a slot's KVCache.

Rows are kept in the cache type's own dtype (float16 for an f16 cache, which holds float16-rounded
values in float32): lossless, and half the bytes. Stored arrays are never written after they are
made, so a disk write on another thread may read them while the engine goes on.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from .cache import KV_TYPES, KVCache
from .parallel import copy_in_parallel
from .slotfile import SlotState


_MAPPED_FROM = 128 * 1024  # glibc's initial mmap threshold


def _alloc(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised array, in memory of its own when large. glibc serves blocks below its mmap
    threshold from the heap and raises that threshold to the size of each large block freed, so a
    cache evicting and storing states of a few MiB soon takes them all from the heap, where freed
    blocks fragment and stay resident: measured, 1.47x the byte limit in RSS. Blocks mapped here go
    back to the system the moment their last array goes."""
    dt = np.dtype(dtype)
    size = int(np.prod(shape))
    if size * dt.itemsize < _MAPPED_FROM:
        return np.empty(shape, dt)
    return np.frombuffer(mmap.mmap(-1, size * dt.itemsize), dt, size).reshape(shape)


def _rows_like(a: np.ndarray, dtype) -> np.ndarray:
    out = _alloc(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    return out


def _stacked(arrays: list[np.ndarray], dtype, axis: int) -> np.ndarray:
    """np.stack (axis 0) or np.concatenate (axis 1 of a layer-major result) into _alloc'ed memory."""
    if axis == 0:
        out = _alloc((len(arrays), *arrays[0].shape), dtype)
        for dst, src in zip(out, arrays):
            np.copyto(dst, src, casting="unsafe")
        return out
    out = _alloc((sum(len(a) for a in arrays), arrays[0].shape[1]), dtype)
    at = 0
    for src in arrays:
        np.copyto(out[at:at + len(src)], src, casting="unsafe")
        at += len(src)
    return out


@dataclass(eq=False)
class RowSegment:
    """K and V rows of a run of tokens, each (n_layer, n_tokens, n_embd_kv); `logits` is the model's
    output after the run's last token, when it was kept."""
    k: np.ndarray
    v: np.ndarray
    logits: np.ndarray | None = None

    @classmethod
    def copy_from(cls, k: np.ndarray, v: np.ndarray, start: int, end: int, kv_type: str,
                  logits: np.ndarray | None = None) -> RowSegment:
        """Rows start..end-1 of cache-shaped arrays (n_layer, >= end, n_embd_kv), copied."""
        dt = KV_TYPES[kv_type]
        return cls(_rows_like(k[:, start:end], dt), _rows_like(v[:, start:end], dt),
                   None if logits is None else np.array(logits, np.float32))

    @property
    def n_tokens(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        # the token ids ride along in the index, 4 bytes each
        return self.k.nbytes + self.v.nbytes + 4 * self.n_tokens + (0 if self.logits is None else self.logits.nbytes)

    def split(self, at: int) -> tuple[RowSegment, RowSegment]:
        # copies, not views: a view would keep the whole block alive after one half is evicted,
        # and the byte budget would no longer be the memory held
        dt = self.k.dtype
        head = RowSegment(_rows_like(self.k[:, :at], dt), _rows_like(self.v[:, :at], dt))
        tail = RowSegment(_rows_like(self.k[:, at:], dt), _rows_like(self.v[:, at:], dt), self.logits)
        return head, tail


@dataclass(eq=False)
class PromptState:
    """A whole stored state: tokens and their K/V rows in one or more consecutive runs."""
    tokens: list[int]
    parts: list[RowSegment]
    kv_type: str
    logits: np.ndarray | None = None  # after the last token

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(p.k.nbytes + p.v.nbytes for p in self.parts)

    def to_slot_state(self) -> SlotState:
        """The slot-file state of it (one array per layer: the runs concatenated)."""
        n_layer, dt = self.parts[0].k.shape[0], self.parts[0].k.dtype
        if len(self.parts) == 1:  # views: the encoder copies them once, into its buffer
            k, v = list(self.parts[0].k), list(self.parts[0].v)
        else:
            k = [_stacked([p.k[il] for p in self.parts], dt, 1) for il in range(n_layer)]
            v = [_stacked([p.v[il] for p in self.parts], dt, 1) for il in range(n_layer)]
        return SlotState(tokens=list(self.tokens), k=k, v=v, kv_dtype=np.dtype(KV_TYPES[self.kv_type]))

    @classmethod
    def from_cache(cls, cache: KVCache) -> PromptState:
        """A copy of a slot's state (the slot's rows go on changing)."""
        logits = None if cache.logits is None else np.array(cache.logits, np.float32)
        segment = RowSegment.copy_from(*cache.stored, 0, cache.n_past, cache.kv_type)
        return cls(list(cache.tokens), [segment], cache.kv_type, logits)

    @classmethod
    def from_slot_state(cls, state: SlotState, kv_type: str, logits: np.ndarray | None = None) -> PromptState:
        """A decoded slot file as one run (copied out of the file's buffer, in kv_type's dtype)."""
        dt = KV_TYPES[kv_type]
        k, v = _stacked(state.k, dt, 0), _stacked(state.v, dt, 0)
        return cls(list(state.tokens), [RowSegment(k, v)], kv_type, logits)


def load_into(cache: KVCache, state: PromptState, n: int, start: int = 0) -> None:
    """Make `cache` hold the state's first n tokens.

    Rows below `start` are left as they are: the caller passes the length of the prefix the cache
    already shares with the state (its K/V rows are those of the same tokens). The logits come along
    only when the whole state is loaded, as they follow its last token."""
    if not 0 <= start <= n <= state.n_tokens:
        raise ValueError(f"cannot load tokens {start}..{n} of a state of {state.n_tokens}")
    if n > cache.n_ctx:
        raise ValueError(f"state of {n} tokens does not fit a slot of {cache.n_ctx}")
    if start > min(cache.n_past, n) or cache.tokens[:start] != state.tokens[:start]:
        raise ValueError(f"the cache does not share the state's first {start} tokens")
    pairs, at = [], 0
    for part in state.parts:
        lo, hi = max(start, at), min(n, at + part.n_tokens)
        if lo < hi:
            for il in range(part.k.shape[0]):  # per layer: both sides contiguous, the fast widening path
                pairs += cache.row_copies(il, lo, hi, part.k[il, lo - at:hi - at], part.v[il, lo - at:hi - at])
        at += part.n_tokens
    copy_in_parallel(pairs)
    cache.tokens = list(state.tokens[:n])
    cache.logits = None if n != state.n_tokens or state.logits is None else state.logits.copy()

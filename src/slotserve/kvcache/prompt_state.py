"""Stored prompt states as the cache tiers keep them: K/V rows by token run, and how they go back
into a slot's KVCache.

Rows are kept in the cache type's own dtype (float16 for an f16 cache, which holds float16-rounded
values in float32): lossless, and half the bytes. Stored arrays are never written after they are
made, so a disk write on another thread may read them while the engine goes on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cache import KV_TYPES, KVCache
from .parallel import copy_in_parallel
from .slotfile import SlotState


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
        return cls(k[:, start:end].astype(dt), v[:, start:end].astype(dt),
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
        head = RowSegment(self.k[:, :at].copy(), self.v[:, :at].copy())
        tail = RowSegment(self.k[:, at:].copy(), self.v[:, at:].copy(), self.logits)
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
        n_layer = self.parts[0].k.shape[0]
        k = [np.concatenate([p.k[il] for p in self.parts]) for il in range(n_layer)]
        v = [np.concatenate([p.v[il] for p in self.parts]) for il in range(n_layer)]
        return SlotState(tokens=list(self.tokens), k=k, v=v, kv_dtype=np.dtype(KV_TYPES[self.kv_type]))

    @classmethod
    def from_slot_state(cls, state: SlotState, kv_type: str, logits: np.ndarray | None = None) -> PromptState:
        """A decoded slot file as one run (copied out of the file's buffer, in kv_type's dtype)."""
        dt = KV_TYPES[kv_type]
        k = np.stack([np.asarray(a, dt) for a in state.k]) if state.k else None
        v = np.stack([np.asarray(a, dt) for a in state.v]) if state.v else None
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
                pairs.append((cache.k[il, lo:hi], part.k[il, lo - at:hi - at]))
                pairs.append((cache.v[il, lo:hi], part.v[il, lo - at:hi - at]))
        at += part.n_tokens
    copy_in_parallel(pairs)
    cache.tokens = list(state.tokens[:n])
    cache.logits = None if n != state.n_tokens or state.logits is None else state.logits.copy()

"""A tiny model's slot store for tests of the save directory: real files, no weights needed."""
from __future__ import annotations

import os

import numpy as np

from slotserve.kvcache.cache import KVCache
from slotserve.kvcache.filenames import LOCK_NAME
from slotserve.kvcache.persist import ModelIdentity, SlotStore
from slotserve.kvcache.savedir import SaveDir

TINY = ModelIdentity(name="tiny", fingerprint="fp-tiny", n_layer=2, n_embd_kv=8, n_vocab=100)
N_CTX = 16


def tiny_store(root, model: ModelIdentity = TINY, **kw) -> SlotStore:
    return SlotStore(SaveDir(root, **kw), model)


def tiny_cache(n: int = 5, seed: int = 0, logits: bool = True, n_ctx: int = N_CTX) -> KVCache:
    """A cache of n tokens with seeded K/V (f16 values) and, by default, the logits after them."""
    rng = np.random.default_rng(seed)
    cache = KVCache(TINY.n_layer, 2, 4, n_ctx, "f16")
    for layer in range(TINY.n_layer):
        cache.write(layer, 0, rng.standard_normal((n, 2, 4)), rng.standard_normal((n, 2, 4)))
    cache.tokens = [1, *rng.integers(2, TINY.n_vocab, n - 1).tolist()][:n]
    if logits:
        cache.logits = rng.standard_normal(TINY.n_vocab).astype(np.float32)
    return cache


def restored(store: SlotStore, name: str, n_ctx: int = N_CTX) -> KVCache:
    cache = KVCache(TINY.n_layer, 2, 4, n_ctx, "f16")
    store.restore(cache, name)
    return cache


def same(a: KVCache, b: KVCache) -> bool:
    """The same tokens, K/V rows and logits (None only matching None)."""
    n = a.n_past
    if a.tokens != b.tokens or (a.logits is None) != (b.logits is None):
        return False
    if a.logits is not None and not np.array_equal(a.logits, b.logits):
        return False
    return np.array_equal(a.k[:, :n], b.k[:, :n]) and np.array_equal(a.v[:, :n], b.v[:, :n])


def litter(root) -> list[str]:
    """Everything in the directory, temp files included, but the lock file saves and reads take turns on
    (it stays, empty, like a directory entry of the directory itself)."""
    return sorted(n for n in os.listdir(root) if n != LOCK_NAME)

"""The host-RAM prompt cache: llama-server's ``--cache-ram`` (server_prompt_cache), over a prefix index.

What llama-server 11434 does, and what this keeps of it:
- ``--cache-ram N`` MiB, default 8192; -1 no byte limit; 0 off. Without a byte limit the cache still
  holds at most ``limit_tokens`` tokens (llama-server passes its total context size n_ctx).
- A state is stored when a slot is taken for a completion task after selection by LRU, or by prompt
  similarity with f_keep < 0.5 (the slot would lose over half its tokens); with --cache-idle-slots also
  every idle slot when a task starts on another one (see `update_cache_on_select`; the engine decides).
- Storing is skipped for an empty slot, for a state the cache already holds whole ("prompt is already
  in the cache") and for one larger than the whole limit; stored states that are prefixes of the new
  one are dropped, and the oldest states make room before the new one is allocated.
- Differences, by design: states sharing a prefix share its rows (a radix tree, as SGLang's
  RadixCache), so storing a state that extends a held one copies only the new rows, and "dropping the
  prefixes" happens by itself. Loading copies rows out and leaves the state in the cache (llama-server
  moves it into the slot and forgets it), so a load never destroys a longer state, and llama-server's
  "don't trash large prompts" guard (f_keep >= 0.25) has nothing left to guard: the stored state is
  preferred whenever it shares a longer prefix with the prompt than the slot does (`prefer_stored`).
  Eviction is by least recent use (store or lookup), a leaf run at a time; evicted states go to
  `spill` (the disk tier) whole.

The tier is the engine thread's object: no locks, and a RamHit is valid until the next store, evict
or clear (load_into checks it still is).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .cache import KV_TYPES, KVCache
from .prefix_index import (EvictParams, InsertParams, MatchPrefixParams, PrefixIndex, TreeNode, key_of,
                           path_to)
from .prompt_state import PromptState, RowSegment, load_into

MiB = 1024 * 1024
log = logging.getLogger("slotserve.kvcache")

# What llama.cpp's unit/test_kv_keep_only_active.py::test_clear_and_restore looks for in the log
# (substrings). llama-server 11434 --verbose writes them as, e.g.:
#   D srv          init: __TEST_TAG_CACHE_IDLE_SLOTS_ENABLED__
#   D slot process_sing: id  0 | task -1 | __TEST_TAG_CACHE_IDLE_SLOT__
#   I srv  get_availabl: updating prompt cache
TAG_IDLE_SLOTS_ENABLED = "__TEST_TAG_CACHE_IDLE_SLOTS_ENABLED__"  # at start: --cache-idle-slots is in effect
TAG_IDLE_SLOT = "__TEST_TAG_CACHE_IDLE_SLOT__"  # an idle slot's state was stored as a task started elsewhere
UPDATING_PROMPT_CACHE = "updating prompt cache"  # a slot taken with update_cache: store, then maybe load


def update_cache_on_select(selected_by_lru: bool, f_keep: float) -> bool:
    """llama-server's rule for storing the state of the slot a completion task was given: it was the
    least recently used one, or the prompt keeps under half of its tokens (f_keep = lcp / n_past)."""
    return selected_by_lru or f_keep < 0.5


def prefer_stored(n_slot_match: int, n_stored_match: int) -> bool:
    """Load the stored state instead of keeping the slot's own cache (see the module notes)."""
    return n_stored_match > n_slot_match


@dataclass(frozen=True)
class RamHit:
    n_match: int  # leading prompt tokens the stored state holds
    node: TreeNode  # where the match ends; its path holds the rows


@dataclass(frozen=True)
class StoreResult:
    stored: bool
    n_new: int  # tokens whose rows were copied (0 when skipped)
    reason: str  # why it was skipped, or "stored"


class RamTier:
    def __init__(self, limit_mib: int = 8192, limit_tokens: int = 0,
                 spill: Callable[[PromptState], object] | None = None, clock: Callable[[], float] | None = None):
        self.limit_bytes = None if limit_mib < 0 else limit_mib * MiB  # None: no byte limit
        self.enabled = limit_mib != 0
        self.limit_tokens = limit_tokens  # 0: none; applies only without a byte limit, as in llama-server
        self.spill = spill
        self.index = PrefixIndex(clock)
        self.n_evicted = 0

    @property
    def nbytes(self) -> int:
        return self.index.nbytes

    @property
    def n_tokens(self) -> int:
        return self.index.n_tokens

    # ------------------------------------------------------------------ store

    def store(self, tokens: Sequence[int], k: np.ndarray, v: np.ndarray, kv_type: str,
              logits: np.ndarray | None = None) -> StoreResult:
        """Keep the state of `tokens`, whose K/V rows are k[:, :n] and v[:, :n] (a KVCache's arrays:
        only rows the cache does not hold yet are copied). `logits`: the output after the last token."""
        n = len(tokens)
        if not self.enabled or n == 0:
            return StoreResult(False, 0, "disabled" if not self.enabled else "empty")
        match = self.index.match_prefix(MatchPrefixParams(tokens))
        if match.n_match == n:
            if logits is not None:
                self._keep_logits(match, logits)
            log.debug("prompt cache: %d tokens already held, not stored again", n)
            return StoreResult(False, 0, "already in the cache")
        row_bytes = (k.shape[0] * k.shape[2] + v.shape[0] * v.shape[2]) * np.dtype(KV_TYPES[kv_type]).itemsize + 4
        need = (n - match.n_match) * row_bytes + (0 if logits is None else 4 * len(logits))
        if self.limit_bytes is not None and need > self.limit_bytes:
            log.warning("prompt cache: a state of %.3f MiB exceeds the cache size limit of %.3f MiB, not stored",
                        need / MiB, self.limit_bytes / MiB)
            return StoreResult(False, 0, "over the limit")
        self.index.lock(match.last_node)  # the rows the new state extends must stay
        try:
            if self.limit_bytes is not None and self.nbytes + need > self.limit_bytes:
                self.evict(self.nbytes + need - self.limit_bytes)
            if self.limit_bytes is not None and self.nbytes + need > self.limit_bytes:
                return StoreResult(False, 0, "no room")  # only locked states left
            self.index.insert(InsertParams(tokens, lambda start, end: RowSegment.copy_from(
                k, v, start, end, kv_type, logits)))
        finally:
            self.index.unlock(match.last_node)
        if self.limit_bytes is None and self.limit_tokens and self.n_tokens > self.limit_tokens:
            self.evict(0, self.n_tokens - self.limit_tokens)
        log.info("prompt cache: stored %d tokens (%d new), %d runs, %.3f MiB", n, n - match.n_match,
                 self.index.n_nodes, self.nbytes / MiB)
        return StoreResult(True, n - match.n_match, "stored")

    def store_cache(self, cache: KVCache) -> StoreResult:
        return self.store(cache.tokens, *cache.stored, cache.kv_type, cache.logits)

    def _keep_logits(self, match, logits: np.ndarray) -> None:
        node = match.last_node
        if match.n_in_node < len(node.key):
            node = self.index.split(node, match.n_in_node)
        if node.value.logits is None:
            self.index.set_value(node, RowSegment(node.value.k, node.value.v, np.array(logits, np.float32)))

    # ------------------------------------------------------------------ lookup and load

    def lookup(self, prompt: Sequence[int]) -> RamHit | None:
        """The longest prefix of `prompt` held, or None. Counts as a use of it."""
        if not self.enabled:
            return None
        match = self.index.match_prefix(MatchPrefixParams(prompt))
        return RamHit(match.n_match, match.last_node) if match.n_match else None

    def state(self, hit: RamHit, kv_type: str) -> PromptState:
        """The stored state the hit ends in (possibly longer than the match), its rows not copied."""
        if not self.index.attached(hit.node):
            raise LookupError("the stored state was evicted since the lookup")
        nodes = path_to(hit.node)
        return PromptState(key_of(hit.node).tolist(), [n.value for n in nodes], kv_type, nodes[-1].value.logits)

    def load_into(self, cache: KVCache, hit: RamHit, n: int | None = None, start: int = 0) -> int:
        """Make `cache` hold the first n (default: all matched) tokens of the hit's state; rows below
        `start` (a prefix the cache already shares with it) are not copied. Returns n."""
        n = hit.n_match if n is None else n
        if n > hit.n_match:
            raise ValueError(f"only {hit.n_match} tokens matched, cannot load {n}")
        load_into(cache, self.state(hit, cache.kv_type), n, start)
        log.info("prompt cache: loaded %d tokens (%d copied)", n, n - start)
        return n

    # ------------------------------------------------------------------ eviction

    def evict(self, n_bytes: int, n_tokens: int = 0) -> int:
        """Free at least n_bytes (and n_tokens), least recently used first; returns the bytes freed."""
        result = self.index.evict(EvictParams(n_bytes, n_tokens, self._on_evict))
        self.n_evicted += result.n_nodes
        return result.n_bytes

    def _on_evict(self, node: TreeNode) -> None:
        n = sum(len(p.key) for p in path_to(node))
        log.info("prompt cache: evicting %d of a state's %d tokens (%.3f MiB)", len(node.key), n, node.nbytes / MiB)
        if self.spill is not None:
            nodes = path_to(node)
            self.spill(PromptState(key_of(node).tolist(), [p.value for p in nodes], _kv_type(node.value),
                                   node.value.logits))

    def clear(self) -> None:
        """Forget everything, spilling nothing (e.g. the model goes to sleep after a disk flush)."""
        self.index.reset()

    def flush(self) -> None:
        """Spill every state (leaves whole), e.g. before sleeping or at shutdown, then forget them."""
        self.evict(self.nbytes + 1)


def _kv_type(value: RowSegment) -> str:
    return "f16" if value.k.dtype == np.float16 else "f32"

"""Both prompt-cache tiers as the engine uses them: store a slot's state, plan where a prompt's prefix
comes from (the slot itself, RAM or disk), load it, and count what happened for /metrics and /props.

The engine thread owns this object and calls it between steps; nothing here blocks on the disk
except `flush` (shutdown, sleep). A disk hit is two calls: `start_disk_read` when the task is taken,
then `finish_disk_read` once `read.done()` (the engine keeps stepping other slots meanwhile); the
state read also goes back into RAM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .cache import KVCache
from .disk_tier import DiskHit, DiskRead, DiskTier
from .prompt_state import PromptState, load_into
from .ram_tier import RamHit, RamTier, StoreResult


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Plan:
    source: str  # "slot": keep the slot's own cache; "ram" / "disk": load from that tier
    n: int  # prompt tokens the slot will hold when the plan is carried out
    n_slot: int  # prompt tokens the slot's own cache shares (rows below it need no copy)
    ram_hit: RamHit | None = None
    disk_hit: DiskHit | None = None


@dataclass
class TierCounters:
    hits: int = 0
    tokens_reused: int = 0  # prompt tokens a hit spared from evaluation (beyond the slot's own prefix)
    stores: int = 0


@dataclass
class Counters:
    lookups: int = 0
    misses: int = 0  # lookups no tier could improve on
    ram: TierCounters = field(default_factory=TierCounters)
    disk: TierCounters = field(default_factory=TierCounters)


# A disk read costs the whole entry's file (read, checksum, decode) for whatever part of it is shared:
# below this many tokens gained it is cheaper to evaluate them (a prompt sharing only its BOS token
# with an entry would otherwise wait for a read to save one token).
MIN_DISK_GAIN = 32


class PromptCache:
    def __init__(self, ram: RamTier, disk: DiskTier | None = None, min_disk_gain: int = MIN_DISK_GAIN):
        self.ram, self.disk, self.min_disk_gain = ram, disk, min_disk_gain
        if disk is not None and ram.spill is None:
            ram.spill = self._spill
        self.counters = Counters()

    @property
    def enabled(self) -> bool:
        return self.ram.enabled or self.disk is not None

    def _spill(self, state) -> None:
        if self.disk.submit_write(state) is not None:
            self.counters.disk.stores += 1

    # ------------------------------------------------------------------ store

    def save(self, cache: KVCache) -> StoreResult:
        """Store the slot's state (llama-server's prompt_save): into RAM, or straight to disk when
        the RAM tier is off. Returns the RAM tier's verdict (TAG_IDLE_SLOT is logged when stored)."""
        if self.ram.enabled:
            result = self.ram.store_cache(cache)
            self.counters.ram.stores += result.stored
            return result
        if self.disk is not None and cache.n_past:
            self._spill(PromptState.from_cache(cache))
        return StoreResult(False, 0, "disabled")

    # ------------------------------------------------------------------ lookup and load

    def plan(self, cache: KVCache, prompt: Sequence[int]) -> Plan:
        """Where the prompt's longest prefix is: a stored state wins when it shares more tokens than
        the slot's own cache (RAM before disk on a tie; disk only for min_disk_gain tokens more than
        either). Capped at the slot's context."""
        self.counters.lookups += 1
        n_slot = common_prefix(cache.tokens, prompt)
        ram_hit = self.ram.lookup(prompt)
        disk_hit = self.disk.lookup(prompt) if self.disk is not None else None
        n_ram = min(ram_hit.n_match, cache.n_ctx) if ram_hit else 0
        n_disk = min(disk_hit.n_match, cache.n_ctx) if disk_hit else 0
        if n_disk >= max(n_slot, n_ram) + max(self.min_disk_gain, 1):
            return Plan("disk", n_disk, n_slot, disk_hit=disk_hit)
        if n_ram > n_slot:
            return Plan("ram", n_ram, n_slot, ram_hit=ram_hit)
        self.counters.misses += 1
        return Plan("slot", n_slot, n_slot)

    def load_ram(self, cache: KVCache, plan: Plan) -> int:
        """Carry out a "ram" plan: the slot then holds plan.n prompt tokens."""
        self.ram.load_into(cache, plan.ram_hit, plan.n, start=plan.n_slot)
        self.counters.ram.hits += 1
        self.counters.ram.tokens_reused += plan.n - plan.n_slot
        return plan.n

    def start_disk_read(self, plan: Plan) -> DiskRead:
        return self.disk.read(plan.disk_hit)

    def finish_disk_read(self, cache: KVCache, read: DiskRead, plan: Plan) -> int:
        """Carry out a "disk" plan once read.done(): the prompt tokens the slot holds afterwards (the
        slot's own prefix when the entry turned out damaged: it was dropped, and the slot untouched).
        The slot must not have changed since `plan` (the engine parks it while the read runs)."""
        state = self.disk.complete(read)
        if state is None:
            self.counters.misses += 1
            return plan.n_slot
        load_into(cache, state, plan.n, start=plan.n_slot)
        self.counters.disk.hits += 1
        self.counters.disk.tokens_reused += plan.n - plan.n_slot
        if self.ram.enabled:  # back into RAM: the next hit is cheaper
            self.counters.ram.stores += self.ram.store_cache(cache).stored
        return plan.n

    # ------------------------------------------------------------------ shutdown, sleep, reporting

    def flush(self, caches: Sequence[KVCache]) -> None:
        """Write the slots' states and everything in RAM to disk and wait for it (shutdown, or before
        sleeping); RAM is empty afterwards. Without a disk tier RAM is simply cleared."""
        if self.disk is None:
            self.ram.clear()
            return
        for cache in caches:
            self.save(cache)
        self.ram.flush()
        self.disk.drain()

    def stats(self) -> dict:
        """Sizes, limits and counters per tier (for /props, /slots and /metrics)."""
        c = self.counters
        out = {"lookups": c.lookups, "misses": c.misses,
               "ram": {"enabled": self.ram.enabled, "bytes": self.ram.nbytes, "limit_bytes": self.ram.limit_bytes,
                       "tokens": self.ram.n_tokens, "evicted": self.ram.n_evicted, **vars(c.ram)}}
        if self.disk is not None:
            out["disk"] = {"bytes": self.disk.nbytes, "limit_bytes": self.disk.limit_bytes,
                           "entries": self.disk.n_entries, "pending_bytes": self.disk.pending_bytes,
                           "dropped": self.disk.n_dropped, **vars(c.disk)}
        return out

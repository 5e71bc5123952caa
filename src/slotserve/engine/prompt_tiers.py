"""The prompt-cache tiers as the engine drives them: which slot a task takes and whether that slot's
state is stored first (llama-server 11434's rules), the stored prefix a prompt starts from, disk reads
parked off the step, idle slots stored when a task starts elsewhere, and the flush at shutdown.

kvcache.prompt_cache.PromptCache keeps the states and knows nothing of slots or tasks; this module
decides when to store and load. Both run on the engine thread only, so neither takes a lock.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from ..kvcache.disk_tier import DiskRead
from ..kvcache.prompt_cache import Plan, PromptCache
from ..kvcache.ram_tier import TAG_IDLE_SLOT, TAG_IDLE_SLOTS_ENABLED, UPDATING_PROMPT_CACHE, update_cache_on_select
from .slot import Slot, common_prefix_len
from .tasks import CompletionRequest

log = logging.getLogger("slotserve.engine")


@dataclass(frozen=True)
class Pick:
    """The slot a completion task takes, the prompt prefix its cache shares, and llama-server's
    update_cache: whether the slot's state is worth storing before the task overwrites it."""
    slot: Slot
    n_shared: int
    update_cache: bool


def pick_slot(slots: Sequence[Slot], req: CompletionRequest, similarity: float) -> Pick | None:
    """The requested slot; else the idle slot sharing the longest prefix (at least `similarity` of the
    prompt); else the least recently used one. None: the slot, or every slot, is busy.

    update_cache as llama-server: a slot taken by LRU, or one that keeps under half of its tokens
    (f_keep < 0.5), or a requested slot whose content is not similar to the prompt."""
    prompt = req.prompt_tokens

    def similar(slot: Slot, n: int) -> bool:
        return n > 0 and n / len(prompt) >= similarity

    def keeps_little(slot: Slot, n: int) -> bool:
        return slot.cache.n_past > 0 and update_cache_on_select(False, n / slot.cache.n_past)

    if req.id_slot >= 0:
        slot = slots[req.id_slot]  # the range was checked on submit
        if slot.is_processing:
            return None
        n = common_prefix_len(slot.cache.tokens, prompt)
        return Pick(slot, n, keeps_little(slot, n if similar(slot, n) else 0))
    shared = {s.id: common_prefix_len(s.cache.tokens, prompt) for s in slots if not s.is_processing}
    if not shared:
        return None
    best = max(shared, key=shared.get)
    if similar(slots[best], shared[best]):
        return Pick(slots[best], shared[best], keeps_little(slots[best], shared[best]))
    lru = min(shared, key=lambda i: slots[i].t_last_used)
    return Pick(slots[lru], shared[lru], True)


def idle_slots_enabled(requested: bool, ram_enabled: bool) -> bool:
    """--cache-idle-slots as llama-server takes it: only with a RAM tier, and said either way."""
    if requested and not ram_enabled:
        log.warning("--cache-idle-slots requires --cache-ram, disabling")
    elif requested:
        # idle slots are stored as a task starts elsewhere, and cleared with a unified KV cache (whose
        # room they would hold); llama.cpp's tests look for the tag
        log.debug(TAG_IDLE_SLOTS_ENABLED)
    return requested and ram_enabled


class PromptTiers:
    """llama-server's --cache-ram / --cache-idle-slots behaviour over both tiers, plus the disk tier's
    reads. `wake` is called (on the I/O thread) when a parked read is done, to end the engine's wait."""

    def __init__(self, cache: PromptCache, idle_slots: bool, kv_unified: bool, wake: Callable[[], None]):
        """idle_slots: --cache-idle-slots in effect (see idle_slots_enabled)."""
        self.cache, self.idle_slots, self.kv_unified, self._wake = cache, idle_slots, kv_unified, wake
        self._reads: dict[int, tuple[DiskRead, Plan]] = {}  # slot id -> its parked disk read

    def take(self, pick: Pick, prompt: list[int], reuse: bool) -> int | None:
        """A completion task takes pick.slot: when update_cache, store the slot's state, then give the
        slot the longest prefix of `prompt` a tier holds, if longer than its own. Returns the prompt
        tokens the slot shares now, or None when that prefix is on disk: the read is parked, and the
        slot must not change until `finish` (reuse False: the task will not use cached tokens)."""
        slot = pick.slot
        if not pick.update_cache:  # as llama-server: a slot kept for its content is not looked up either
            return common_prefix_len(slot.cache.tokens, prompt)
        log.info("slot %d: %s", slot.id, UPDATING_PROMPT_CACHE)
        self.cache.save(slot.cache)
        if not reuse:
            return 0
        plan = self.cache.plan(slot.cache, prompt)
        if plan.source == "ram":
            return self.cache.load_ram(slot.cache, plan)
        if plan.source == "disk":
            read = self.cache.start_disk_read(plan)
            read.future.add_done_callback(lambda _: self._wake())
            self._reads[slot.id] = (read, plan)
            return None
        return plan.n

    def read_done(self, slot: Slot) -> bool:
        return self._reads[slot.id][0].done()

    def finish(self, slot: Slot) -> int:
        """The slot's parked read is done: load it. Returns the prompt tokens the slot shares now (its
        own prefix, untouched, when the entry turned out damaged: it was deleted, never served)."""
        read, plan = self._reads.pop(slot.id)
        return self.cache.finish_disk_read(slot.cache, read, plan)

    def started(self, slots: Sequence[Slot]) -> None:
        """A completion task started: with --cache-idle-slots, store every idle slot's state, and with a
        unified KV cache clear the slot (its prefix is then a RAM hit away)."""
        if not self.idle_slots:
            return
        for slot in slots:
            if slot.is_processing:
                continue
            if self.cache.save(slot.cache).stored:
                log.debug("slot %d: %s", slot.id, TAG_IDLE_SLOT)
            if self.kv_unified:
                slot.cache.clear()

    def poll(self) -> None:
        """Between steps: take in the disk tier's finished writes."""
        if self.cache.disk is not None:
            self.cache.disk.poll()

    def close(self, slots: Sequence[Slot]) -> None:
        """At shutdown: with a disk tier, the slots' states and everything in RAM are written and waited for."""
        self.cache.flush([s.cache for s in slots])
        if self.cache.disk is not None:
            self.cache.disk.close()
            log.info("disk cache: %d entries, %.1f MiB written to %s", self.cache.disk.n_entries,
                     self.cache.disk.nbytes / (1 << 20), self.cache.disk.dir.root)

    def stats(self) -> dict:
        return self.cache.stats()

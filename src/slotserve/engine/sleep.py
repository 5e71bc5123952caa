"""--sleep-idle-seconds: after N idle seconds the model and every KV cache are dropped, and the next request
that needs them loads them again (llama-server's sleeping state).

Two sides share an IdleSleep. The HTTP side holds the server awake while a request may use the model
(`hold` / `release`) and, finding it asleep, asks it to wake and waits. The engine thread alone decides to
fall asleep (nothing held, nothing running or queued, idle long enough) and does the dropping and the
reloading, between steps, so a transition never races a generation: a request that arrives while the
server is falling asleep waits, and is served once it is awake again.
"""
from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Callable, Sequence

from ..kvcache.cache import KVCache
from .prompt_tiers import PromptTiers
from .slot import Slot

log = logging.getLogger("slotserve.engine")


@dataclass(frozen=True)
class ModelHooks:
    """How the engine gives the model back and gets it again: the owner of the weights (the Service)
    drops its own references in `drop`, and `load` reads the file again (seconds for a large model)."""
    drop: Callable[[], None]
    load: Callable[[], object]  # -> the model.forward.Llama to serve with
    load_draft: Callable[[], object] | None = None  # -> the draft model's Llama (with -md)


def empty_like(cache: KVCache) -> KVCache:
    """A slot's cache while asleep: no rows (the memory is freed), the same layout."""
    return KVCache(cache.k.shape[0], cache.n_head_kv, cache.head_dim, 0, cache.kv_type)


def rss_mib() -> float:
    """This process's resident memory (0 where /proc is missing): logged on each transition."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0


class IdleSleep:
    def __init__(self, idle_seconds: float, hooks: ModelHooks):
        self.idle_seconds, self.hooks = idle_seconds, hooks
        self._lock = threading.Lock()
        self._asleep = False  # from the moment the engine decides to sleep until it is loaded again
        self._freed = False  # the model and caches are gone (/props reports sleeping from then on)
        self._n_held = 0
        self._t_last = time.monotonic()  # when the server was last held or busy
        self._waiters: list[Future] = []
        self._nudge: Callable[[], None] = lambda: None  # the engine's: wakes its thread from its queue

    @property
    def is_sleeping(self) -> bool:
        return self._asleep

    @property
    def is_freed(self) -> bool:
        """Asleep with the model and caches given back (is_sleeping turns true before, when it decides)."""
        return self._asleep and self._freed

    # ---- the HTTP side ---------------------------------------------------------------------------
    def hold(self) -> Future | None:
        """Keep the server awake for a request. None: it is, and stays so until `release`. Otherwise a
        Future that completes once it is awake again: then call hold() again (it may have gone back to
        sleep meanwhile, if nobody used it for idle_seconds)."""
        with self._lock:
            if not self._asleep:
                self._n_held += 1
                return None
            waiter: Future = Future()
            self._waiters.append(waiter)
        self._nudge()
        return waiter

    def release(self) -> None:
        with self._lock:
            self._n_held -= 1
            self._t_last = time.monotonic()

    # ---- the engine thread -----------------------------------------------------------------------
    def attach(self, nudge: Callable[[], None]) -> None:
        """The engine's; its idle time counts from here."""
        self._nudge, self._t_last = nudge, time.monotonic()

    def due(self, busy: bool) -> bool:
        """Whether to fall asleep now (busy: the engine has work running or queued). True marks the
        server asleep at once, so that every request from here on waits for the wake."""
        with self._lock:
            now = time.monotonic()
            if busy or self._n_held:
                self._t_last = now
                return False
            if now - self._t_last < self.idle_seconds:
                return False
            self._asleep = True
            return True

    @property
    def wanted(self) -> bool:
        """A request is waiting for the wake."""
        with self._lock:
            return bool(self._waiters)

    def awake(self) -> None:
        """The model is loaded again: let the waiting requests go on."""
        with self._lock:
            self._asleep = self._freed = False
            self._t_last = time.monotonic()
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            try:
                waiter.set_result(None)
            except InvalidStateError:  # its request went away while waiting
                pass

    def fall_asleep(self, slots: Sequence[Slot], tiers: PromptTiers | None) -> None:
        """Engine thread, every slot idle: the tiers write what they hold to disk (with --cache-disk, so it
        is found after the wake) or forget it; then every slot's rows and the model go."""
        t0, rss = time.perf_counter(), rss_mib()
        log.info("server is entering sleeping state after %g idle seconds", self.idle_seconds)
        if tiers is not None:
            tiers.cache.flush([s.cache for s in slots])
        for slot in slots:
            slot.cache, slot.last = empty_like(slot.cache), None  # as llama-server's slots after a reload
        self.hooks.drop()
        gc.collect()  # the weights may sit in reference cycles; the memory must really go now
        self._freed = True
        log.info("sleeping: model and KV caches freed in %.0f ms (RSS %.1f -> %.1f MiB)",
                 (time.perf_counter() - t0) * 1e3, rss, rss_mib())

    def wait_for_work(self, inbox: queue.Queue, stop: threading.Event) -> list | None:
        """Engine thread, asleep: block until a task arrives or a request asks for the wake. Returns the
        tasks taken off the inbox, or None when the server is stopping instead."""
        tasks: list = []
        while not stop.is_set():
            item = inbox.get()  # None: a nudge (a waiting request, or stop)
            if item is not None:
                tasks.append(item)
            if tasks or self.wanted:
                return tasks
        return None

    def load(self):
        """Engine thread: read the model again (the logs show it load); returns the Llama."""
        t0 = time.perf_counter()
        log.info("server is exiting sleeping state: loading the model")
        model = self.hooks.load()
        log.info("awake: model loaded in %.0f ms (RSS %.1f MiB)", (time.perf_counter() - t0) * 1e3, rss_mib())
        return model

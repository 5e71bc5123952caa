"""How long each slot's context is: llama-server's rule.

-c N: the slots share N (each gets N / n_parallel), or with a unified cache each may use all N.
-c unset: each slot gets the model's training context (llama.cpp's common/fit.cpp sizes the whole
context as n_ctx_train x n_parallel), then shrinks it, in steps of 256 down to 4096 tokens (its
--fit-ctx default), until the KV caches fit in the memory that is free. -c 0 asks for the training
context as it is: no shrinking (llama.cpp turns its fitting off for an explicit 0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

FIT_MIN_CTX = 4096  # llama.cpp's --fit-ctx default: the context is never fitted below this
FIT_MARGIN = 1024 << 20  # llama.cpp's --fit-target default: leave 1 GiB free
ALIGN = 256


@dataclass(frozen=True)
class ContextPlan:
    n_ctx_slot: int
    n_ctx_total: int  # what the slots share (llama-server's n_ctx)
    reduced_from: int = 0  # the per-slot context before it was fitted to memory; 0: not reduced


def plan_context(n_ctx: int | None, n_parallel: int, unified: bool, n_ctx_train: int, bytes_per_token: int,
                 n_caches: int, available: int | None) -> ContextPlan:
    """The slot context for -c n_ctx (None: unset). bytes_per_token: one cache's K and V for one token;
    n_caches: how many such caches are kept (the slots, plus a restore's scratch cache)."""
    if n_ctx:
        per_slot = n_ctx if unified else max(1, n_ctx // n_parallel)
        return ContextPlan(min(per_slot, n_ctx_train), n_ctx)
    per_slot = n_ctx_train
    if n_ctx is None and available is not None:
        fits = (available - FIT_MARGIN) // max(1, bytes_per_token * n_caches)
        if fits < per_slot:
            fitted = max(min(FIT_MIN_CTX, n_ctx_train), fits - fits % ALIGN)
            if fitted < per_slot:
                return ContextPlan(fitted, fitted * (1 if unified else n_parallel), reduced_from=per_slot)
    return ContextPlan(per_slot, per_slot * (1 if unified else n_parallel))


def available_memory() -> int | None:
    """Bytes this process may still take: the system's available memory, or less under a cgroup limit."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            limit = f_max.read().strip()
            if limit != "max":
                found.append(int(limit) - int(f_cur.read()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return max(0, min(found))

"""--context-shift: what a generation keeps when its prompt or its output outgrows the slot's context."""
from __future__ import annotations

import logging

from ..model.forward import Llama
from .slot import Slot
from .tasks import CompletionRequest

log = logging.getLogger("slotserve.engine")


def n_keep(req: CompletionRequest, n_prompt: int, n_ctx: int, add_bos: bool) -> int:
    """Prompt tokens a context shift keeps, as llama-server counts them (BOS on top of n_keep)."""
    n = n_prompt if req.n_keep < 0 else req.n_keep
    if add_bos:
        n += 1
    return min(n_ctx - 4, n)


def truncate_prompt(prompt: list[int], req: CompletionRequest, n_ctx: int, add_bos: bool) -> list[int]:
    """A prompt that does not fit: keep its first n_keep tokens and drop whole blocks of half the remaining
    room from after them until the rest fits (older llama-server)."""
    # "keep the whole prompt" cannot be honoured here: keep its first half instead
    kept = n_ctx // 2 if req.n_keep < 0 else n_keep(req, len(prompt), n_ctx, add_bos)
    block = max(1, (n_ctx - kept) // 2)
    n_blocks = (len(prompt) - kept - block) // block
    return prompt[:kept] + prompt[kept + n_blocks * block:]


def shift_context(model: Llama, slot: Slot, add_bos: bool) -> None:
    """A generating slot whose cache is full drops part of it to keep going."""
    gen, cache = slot.gen, slot.cache
    kept = n_keep(gen.task.request, len(gen.prompt), cache.n_ctx, add_bos)
    n_left = cache.n_past - kept
    n_discard = gen.task.request.n_discard or n_left // 2
    n_discard = max(0, min(n_discard, n_left - 1))
    log.info("slot %d: context shift, n_keep %d, n_discard %d", slot.id, kept, n_discard)
    model.shift_cache(cache, kept, n_discard)
    gen.truncated = True

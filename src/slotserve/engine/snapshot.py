"""What the engine publishes for /metrics and GET /slots: counters and slot views, frozen after a step.

The engine thread builds a new EngineSnapshot after every launch, step and slot action and swaps the
reference (atomic in Python); readers on other threads take whichever one is current and never see
the engine's live state, nor make the engine copy anything for them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from .slot import Slot
from .tasks import CompletionRequest


@dataclass
class EngineStats:
    """Counters for /metrics, written by the engine thread only (readers get a copy in the snapshot)."""
    n_prompt_tokens: int = 0
    n_prompt_tokens_cached: int = 0
    t_prompt_ms: float = 0.0
    n_predicted_tokens: int = 0
    n_predicted_steps: int = 0  # decode steps: each request's first token needs none
    t_predicted_ms: float = 0.0
    n_decode_calls: int = 0
    n_busy_slots_total: int = 0
    n_tokens_max: int = 0
    n_draft_tokens: int = 0  # proposed by prompt lookup
    n_draft_accepted: int = 0
    n_draft_steps: int = 0  # forwards that verified a draft


@dataclass(frozen=True)
class SlotView:
    """One slot as /slots shows it: its current request, else its previous one (request None: never used)."""
    id: int
    n_ctx: int
    n_past: int  # tokens in the slot's KV cache: what a save would write
    is_processing: bool
    id_task: int = -1
    request: CompletionRequest | None = None  # never modified once submitted
    n_decoded: int = 0
    prompt_n: int = 0  # prompt tokens evaluated
    cache_n: int = 0  # prompt tokens reused from the cache
    has_new_line: bool = False  # the generated text has one

    @classmethod
    def of(cls, slot: Slot) -> SlotView:
        gen = slot.gen or slot.last
        if gen is None:
            return cls(slot.id, slot.cache.n_ctx, slot.cache.n_past, slot.is_processing)  # held by a slot action
        return cls(slot.id, slot.cache.n_ctx, slot.cache.n_past, slot.is_processing, id_task=gen.task.id,
                   request=gen.task.request, n_decoded=len(gen.generated), prompt_n=gen.timings.prompt_n,
                   cache_n=gen.timings.cache_n, has_new_line="\n" in gen.text.text)


@dataclass(frozen=True)
class EngineSnapshot:
    stats: EngineStats
    slots: tuple[SlotView, ...]
    n_waiting: int  # tasks queued for a busy slot (llama-server's requests_deferred)
    prompt_cache: dict | None = None  # PromptCache.stats(), built for this snapshot (None: no tiers)

    @property
    def n_busy(self) -> int:
        return sum(s.is_processing for s in self.slots)

    @classmethod
    def of(cls, slots: list[Slot], stats: EngineStats, n_waiting: int,
           prompt_cache: dict | None = None) -> EngineSnapshot:
        return cls(copy.copy(stats), tuple(SlotView.of(s) for s in slots), n_waiting, prompt_cache)

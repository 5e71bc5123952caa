"""One server slot: its KV cache and, while it serves a request, that request's generation state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..kvcache.cache import KVCache
from ..model.sampling import Sampler
from .tasks import CompletionTask, Timings, TokenOut
from .text import TextAssembler


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Generation:
    """The part of a slot that lives only as long as one request."""
    task: CompletionTask
    prompt: list[int]
    pending: list[int]  # prompt tokens not yet evaluated
    sampler: Sampler
    text: TextAssembler
    n_predict: int
    timings: Timings
    t_start: float = field(default_factory=time.perf_counter)
    t_prompt_done: float = 0.0
    last_token: int = -1
    truncated: bool = False  # the context was shifted: tokens were dropped from it
    draft_pause: int = 0  # decode steps to go without drafting, after drafts the model refuted
    draft_backoff: int = 1
    generated: list[int] = field(default_factory=list)
    probs: list[TokenOut] = field(default_factory=list)


class Slot:
    def __init__(self, id_slot: int, cache: KVCache):
        self.id = id_slot
        self.cache = cache
        self.gen: Generation | None = None
        self.last: Generation | None = None  # the previous request, which /slots still shows
        self.t_last_used = 0.0

    @property
    def is_processing(self) -> bool:
        return self.gen is not None

    @property
    def in_prompt(self) -> bool:
        return self.gen is not None and bool(self.gen.pending)

    def release(self) -> None:
        self.gen, self.last = None, self.gen
        self.t_last_used = time.perf_counter()

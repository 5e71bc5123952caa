"""One server slot: its KV cache and, while it serves a request, that request's generation state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from ..constraint import Constraint
from ..kvcache.cache import KVCache
from ..model.sampling import Sampler
from .speculative import PromptLookup
from .tasks import CompletionTask, Timings, TokenOut
from .text import TextAssembler


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Phase(Enum):
    LOAD = "load"  # its prompt's prefix is being read from the disk tier; not stepped until it is in
    PREFILL = "prefill"  # prompt tokens still to evaluate (`pending`)
    DECODE = "decode"  # each step evaluates `last_token` (and a draft) and chooses the next
    DONE = "done"  # the result is sent; the slot no longer holds this generation


@dataclass
class Generation:
    """The part of a slot that lives only as long as one request."""
    task: CompletionTask
    prompt: list[int]
    pending: list[int]  # PREFILL: prompt tokens not yet evaluated
    sampler: Sampler
    text: TextAssembler
    n_predict: int  # -1: until a stop or the context's end
    timings: Timings
    drafter: PromptLookup | None = None  # None: this request does not speculate
    constraint: Constraint | None = None  # the grammar the output must match, advanced past every chosen token
    phase: Phase = Phase.PREFILL
    t_start: float = field(default_factory=time.perf_counter)
    t_prompt_done: float = 0.0  # set when the phase leaves PREFILL
    last_token: int = 0  # DECODE: the chosen token not yet in the cache, the next step's input
    truncated: bool = False  # the context was shifted: tokens were dropped from it
    generated: list[int] = field(default_factory=list)
    probs: list[TokenOut] = field(default_factory=list)

    @property
    def n_remain(self) -> int | None:
        """Tokens still allowed by n_predict; None when unlimited."""
        return None if self.n_predict < 0 else self.n_predict - len(self.generated)


class Slot:
    def __init__(self, id_slot: int, cache: KVCache):
        self.id = id_slot
        self.cache = cache
        self.gen: Generation | None = None
        self.last: Generation | None = None  # the previous request, which /slots still shows
        self.t_last_used = 0.0
        # a slot action holds it: a save copying its rows, or a restore filling the cache that will replace its own
        self.held = False

    @property
    def is_processing(self) -> bool:
        return self.gen is not None or self.held

    def in_phase(self, phase: Phase) -> bool:
        return self.gen is not None and self.gen.phase is phase

    def release(self) -> None:
        if self.gen is not None:
            self.gen.phase = Phase.DONE
        self.gen, self.last = None, self.gen
        self.t_last_used = time.perf_counter()

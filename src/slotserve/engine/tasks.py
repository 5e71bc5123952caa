"""What the API hands the engine, and what comes back. No HTTP here and no model math.

The kinds below are str-enums: they compare equal to llama-server's words ("eos", "invalid_request"),
so code that compares strings keeps working, while an unknown word fails where it is made.
"""
from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Union

from ..constraint import Constraint, ConstraintSpec
from ..model.sampling import SamplingParams

_task_ids = itertools.count()


class Word(str, Enum):
    """A str-enum shown as its value: logs and f-strings say "eos", not "StopReason.EOS"."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class StopReason(Word):
    """Why a generation ended (llama-server's stop_type)."""
    EOS = "eos"  # an end-of-generation token
    LIMIT = "limit"  # n_predict reached, or the context is full
    WORD = "word"  # a stop string
    NONE = "none"  # not stopped (yet)


class ErrorKind(Word):
    """llama-server's error types, by the names api/errors.py maps to a type and an HTTP status."""
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    SERVER = "server"
    NOT_SUPPORTED = "not_supported"
    UNAVAILABLE = "unavailable"
    EXCEED_CONTEXT_SIZE = "exceed_context_size"
    INSUFFICIENT_STORAGE = "insufficient_storage"  # slotserve's: a save found the disk full (HTTP 507)


class EngineError(Exception):
    """A request the engine refuses. `extra` fields travel inside llama-server's error object."""

    def __init__(self, kind: ErrorKind, message: str, **extra):
        super().__init__(message)
        self.kind, self.message, self.extra = ErrorKind(kind), message, extra


def exceed_context(n_prompt: int, n_ctx: int) -> EngineError:
    return EngineError(ErrorKind.EXCEED_CONTEXT_SIZE,
                       f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), "
                       "try increasing it", n_prompt_tokens=n_prompt, n_ctx=n_ctx)


def bad_slot(id_slot: int, n_slots: int) -> EngineError:
    return EngineError(ErrorKind.INVALID_REQUEST, f"slot {id_slot} does not exist: this server has {n_slots} "
                                                  f"slots (ids 0 to {n_slots - 1})")


@dataclass
class CompletionRequest:
    prompt_tokens: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n_predict: int = -1  # the server's -n already applied by the API: -1 here means unlimited
    stop: list[str] = field(default_factory=list)
    id_slot: int = -1
    cache_prompt: bool = True
    n_probs: int = 0
    stream: bool = False
    speculative: bool = True  # drafts (prompt lookup or -md): same output distribution, fewer weight reads
    n_keep: int = 0  # with --context-shift: prompt tokens never discarded (-1: the whole prompt)
    n_discard: int = 0  # with --context-shift: tokens dropped per shift (0: half of what may go)
    return_progress: bool = False  # streaming: report prompt evaluation progress (PromptProgress)
    timings_per_token: bool = False  # streaming: every partial result carries the timings so far
    constraint: ConstraintSpec | None = None  # grammar / json_schema / response_format: what the output must match


@dataclass
class TokenOut:
    token: int
    text: str  # text that became sendable with this token (may be empty)
    piece: bytes
    probs: list[tuple[int, float]] | None = None  # top-n (token, prob) when n_probs > 0
    prob: float | None = None  # probability of the chosen token
    timings: Timings | None = None  # the request's timings so far, with timings_per_token
    cache_n: int | None = None  # on a request's first token: its prompt tokens reused from the cache


@dataclass
class PromptProgress:
    """How far a streaming request's prompt has been evaluated (return_progress): sent when the request
    starts and after each prompt chunk, as llama-server's prompt_progress."""
    total: int  # prompt tokens
    cache: int  # of them reused from the slot's cache
    processed: int  # of them in the cache now, the reused ones included
    time_ms: int  # since the request started
    timings: Timings | None = None  # with timings_per_token


@dataclass
class Timings:
    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    draft_n: int = 0  # draft tokens verified
    draft_n_accepted: int = 0  # of them, accepted

    @property
    def predicted_steps(self) -> int:
        """Decode steps of the generation: the first token comes from the prompt's logits (llama-server's
        n_gen_steps), so rates count one step fewer than tokens."""
        return max(self.predicted_n - 1, 0)

    def as_dict(self) -> dict:
        def per_token(ms: float, n: int) -> float:
            return ms / n if n else 0.0

        def per_second(ms: float, n: int) -> float:
            return 1e3 * n / ms if ms > 0 else 0.0

        out = {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": per_token(self.prompt_ms, self.prompt_n),
            "prompt_per_second": per_second(self.prompt_ms, self.prompt_n),
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": per_token(self.predicted_ms, self.predicted_steps),
            "predicted_per_second": per_second(self.predicted_ms, self.predicted_steps),
        }
        if self.draft_n:  # as llama-server: only for a generation that speculated
            out.update(draft_n=self.draft_n, draft_n_accepted=self.draft_n_accepted)
        return out


@dataclass
class CompletionResult:
    id_slot: int
    content: str
    tokens: list[int]
    probs: list[TokenOut]
    stop_type: StopReason
    stopping_word: str
    truncated: bool
    tokens_evaluated: int  # prompt length
    tokens_cached: int  # tokens in the slot's cache when the answer was sent
    timings: Timings


# The engine reports progress of a completion through `sink`, called on the engine thread with a
# TokenOut per generated token (streaming requests only; PromptProgress before them when asked for),
# then exactly one CompletionResult or EngineError.
Sink = Callable[["TokenOut | PromptProgress | CompletionResult | EngineError"], None]


@dataclass
class CompletionTask:
    request: CompletionRequest
    sink: Sink
    id: int = field(default_factory=lambda: next(_task_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    # the engine's: built from request.constraint by Engine.submit, then advanced by the engine thread alone
    constraint: Constraint | None = field(default=None, repr=False)


class SlotActionKind(Word):
    SAVE = "save"
    RESTORE = "restore"
    ERASE = "erase"
    DELETE = "delete"  # of a saved file, not of a slot


@dataclass
class SlotActionTask:
    """One slot action; its future resolves to the action's result or raises an EngineError."""
    action: SlotActionKind
    id_slot: int = -1  # unused by DELETE
    filename: str = ""  # unused by ERASE
    future: Future = field(default_factory=Future)
    # set when the client goes away: an action not started yet is dropped, never run for nobody
    cancelled: threading.Event = field(default_factory=threading.Event)
    timeout_s: float | None = None  # refused when its slot stays busy this long (None: waits as long as it takes)
    t_submit: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.action = SlotActionKind(self.action)


# What each slot action's future resolves to (api/routes_slots.py writes them out as llama-server does).
@dataclass(frozen=True)
class SaveResult:
    id_slot: int
    filename: str
    n_saved: int  # tokens
    n_written: int  # bytes
    save_ms: float


@dataclass(frozen=True)
class RestoreResult:
    id_slot: int
    filename: str
    n_restored: int  # tokens
    n_read: int  # bytes
    restore_ms: float


@dataclass(frozen=True)
class EraseResult:
    id_slot: int
    n_erased: int


@dataclass(frozen=True)
class DeleteResult:
    filename: str


SlotActionResult = Union[SaveResult, RestoreResult, EraseResult, DeleteResult]


def check_task(task: CompletionTask | SlotActionTask, n_slots: int, n_ctx_slot: int, context_shift: bool) -> None:
    """The engine's rules for a task, which hold whatever the slots are doing; raises EngineError."""
    if isinstance(task, SlotActionTask):
        if task.action is not SlotActionKind.DELETE and not 0 <= task.id_slot < n_slots:
            raise bad_slot(task.id_slot, n_slots)
        return
    req = task.request
    if not -1 <= req.id_slot < n_slots:
        raise bad_slot(req.id_slot, n_slots)
    if not req.prompt_tokens:
        raise EngineError(ErrorKind.INVALID_REQUEST, "the prompt is empty")
    if len(req.prompt_tokens) >= n_ctx_slot and not context_shift:
        raise exceed_context(len(req.prompt_tokens), n_ctx_slot)

"""One generation's constraint: the llguidance matcher plus llama.cpp's lazy-grammar trigger.

The engine calls it between the forward and the sampler: `fill_bitmask`/`apply` before sampling,
`accept` with the chosen token after, `rollback` when speculative tokens are taken back. A lazy
constraint lets everything through until a trigger appears in the output, then constrains from the
trigger's start on (llama.cpp's llama_grammar_accept_impl: the text from the trigger is replayed into the
grammar, so a grammar for a tool call starts with the trigger word itself).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import llguidance
import numpy as np

from .spec import ConstraintError, ConstraintSpec, Trigger, TriggerType
from .vocab import GrammarVocab


@dataclass
class _Step:
    """What accepting one token did, so rollback can undo exactly that."""
    consumed: int  # tokens the matcher consumed for it (a trigger replays several, waiting consumes none)
    waiting_before: bool
    buffer_len_before: int


class _Triggers:
    """The trigger set of a lazy grammar, resolved against the vocabulary."""

    def __init__(self, triggers: Sequence[Trigger], vocab: GrammarVocab):
        self.tokens: set[int] = set()
        self.patterns: list[tuple[re.Pattern[bytes], bool]] = []  # (regex, match the whole output)
        for t in triggers:
            if t.type == TriggerType.TOKEN:
                if not 0 <= t.token < vocab.n_vocab:
                    raise ConstraintError(f"grammar_triggers: token {t.token} is out of range for a "
                                          f"vocabulary of {vocab.n_vocab}")
                self.tokens.add(t.token)
            elif t.type == TriggerType.WORD:
                ids = vocab.tokenize_word(t.value)
                # llama-server: a word that is one token triggers on that token (it may be a special
                # token, which spells nothing in plain text); a longer word on its text
                if len(ids) == 1:
                    self.tokens.add(ids[0])
                else:
                    self.patterns.append((re.compile(re.escape(t.value.encode())), False))
            else:
                pattern = t.value
                full = t.type == TriggerType.PATTERN_FULL
                try:
                    self.patterns.append((re.compile(pattern.encode()), full))
                except re.error as e:
                    raise ConstraintError(f"grammar_triggers: bad pattern {pattern!r}: {e}") from None

    def find(self, text: bytes) -> int | None:
        """Where the constrained part of `text` starts: the first non-empty capture group of the first
        matching pattern, else the match's start (llama_grammar_trigger_pattern::find)."""
        for regex, full in self.patterns:
            m = regex.fullmatch(text) if full else regex.search(text)
            if m is None:
                continue
            for g in range(1, (regex.groups or 0) + 1):
                if m.start(g) >= 0 and m.end(g) > m.start(g):
                    return m.start(g)
            return m.start()
        return None


class Constraint:
    """The grammar state of one generation. Not thread-safe: the engine thread owns it; the masks of many
    constraints are computed together (and off the GIL) by `ConstraintMasks`."""

    def __init__(self, spec: ConstraintSpec, vocab: GrammarVocab):
        self.spec, self.vocab = spec, vocab
        self.matcher = llguidance.LLMatcher(vocab.lltokenizer, spec.grammar, log_level=0)
        if self.matcher.is_error():  # e.g. a special-token name this vocabulary lacks
            raise ConstraintError(f"{spec.source}: {self.matcher.get_error()}")
        self._triggers = None
        if spec.lazy:
            self._triggers = _Triggers(spec.triggers, vocab)
        self.waiting = spec.lazy  # a lazy grammar waits for its trigger; until then nothing is masked
        self._buffer = b""  # output so far while waiting (llama.cpp's trigger_buffer)
        self._pieces: list[tuple[int, int, int]] = []  # (token, start, end) in _buffer, for the replay
        self._steps: list[_Step] = []

    def fork(self) -> Constraint:
        """An independent copy in the same state (n_cmpl: one per completion)."""
        twin = object.__new__(Constraint)
        twin.__dict__.update(self.__dict__)
        twin.matcher = self.matcher.deep_copy()
        twin._pieces, twin._steps = list(self._pieces), list(self._steps)
        return twin

    # -- before sampling ----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether this step's logits need a mask (a lazy grammar waiting for its trigger does not)."""
        return not self.waiting

    def fill_bitmask(self, row: np.ndarray) -> None:
        """Write the allowed-token bitmask into one int32 row of vocab.n_words (the GIL is released)."""
        if row.dtype != np.int32 or row.shape != (self.vocab.n_words,) or not row.flags.c_contiguous:
            raise ValueError(f"a bitmask row is a contiguous int32 array of {self.vocab.n_words}")
        if self.waiting:
            row.fill(-1)
            return
        self.matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)

    def allowed_mask(self) -> np.ndarray:
        """The tokens the grammar allows next, as a bool array of vocab.n_vocab."""
        row = np.empty(self.vocab.n_words, np.int32)
        self.fill_bitmask(row)
        return self.vocab.allowed_from_bitmask(row)

    def allows(self, token: int) -> bool:
        """Whether the grammar takes this token next, without computing the whole mask (llama.cpp samples
        unconstrained first and masks only when the grammar refuses the token)."""
        if self.waiting:
            return True
        if token in self.vocab.eog_ids:
            return self.matcher.is_accepting()
        return self.matcher.validate_tokens([token]) == 1

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of disallowed tokens to -inf, in place (one row of n_vocab)."""
        if self.active:
            apply_allowed(logits, self.allowed_mask())

    # -- after sampling -----------------------------------------------------------------------------------

    def accept(self, token: int) -> None:
        """Advance past the chosen token; a token the grammar forbids is a ConstraintError (the mask was
        not applied, or a draft was accepted unchecked)."""
        step = _Step(0, self.waiting, len(self._buffer))
        if self.waiting:
            self._wait(token, step)
        elif (consumed := self._consume(token)) is not None:
            step.consumed = consumed
        else:
            raise ConstraintError(f"token {token} ({self.vocab.token_bytes[token]!r}) does not fit the "
                                  f"{self.spec.source} here")
        self._steps.append(step)

    def _consume(self, token: int) -> int | None:
        """Consume the token if the grammar allows it: how many tokens the matcher's history grew by, or
        None, leaving the matcher as it was (consume_token would put it in its error state for good)."""
        if token not in self.vocab.eog_ids:
            return 1 if self.matcher.try_consume_tokens([token]) == 1 else None
        # try_consume_tokens never takes EOS; EOS fits exactly when the output is complete, and llguidance
        # records it only when it ends a grammar that could have gone on
        if not self.matcher.is_accepting():
            return None
        was_stopped = self.matcher.is_stopped()
        return None if not self.matcher.consume_token(token) else 0 if was_stopped else 1

    def _wait(self, token: int, step: _Step) -> None:
        if token in self._triggers.tokens:
            step.consumed = self._consume_trigger_token(token)
            self.waiting = False
            return
        piece = self.vocab.token_bytes[token]
        if piece.startswith(b"\xff"):
            piece = b""  # a special token spells nothing in the output text
        start = len(self._buffer)
        self._buffer += piece
        self._pieces.append((token, start, len(self._buffer)))
        at = self._triggers.find(self._buffer)
        if at is None:
            return
        # Replay from the trigger's start: whole tokens as they are, the one the trigger starts inside of
        # as the bytes of its tail (llama.cpp feeds the partial piece too).
        ids: list[int] = []
        for tok, a, b in self._pieces:
            if b <= at:
                continue
            ids += [tok] if a >= at else self.vocab.lltokenizer.tokenize_bytes(self._buffer[at:b])
        if not self.matcher.consume_tokens(ids):
            error = self.matcher.get_error()
            raise ConstraintError(f"the grammar rejects its own trigger text "
                                  f"{self._buffer[at:].decode('utf-8', 'replace')!r}: {error}")
        step.consumed = len(ids)
        self.waiting = False

    def _consume_trigger_token(self, token: int) -> int:
        # The grammar may name the token itself (<[id]>, <|name|>) or spell its text
        if self.matcher.validate_tokens([token]) == 1:
            self.matcher.consume_token(token)
            return 1
        text = self.vocab.token_bytes[token].removeprefix(b"\xff")
        ids = self.vocab.lltokenizer.tokenize_bytes(text)
        if not self.matcher.consume_tokens(ids):
            raise ConstraintError(f"the grammar rejects its trigger token {token} ({text!r}): "
                                  f"{self.matcher.get_error()}")
        return len(ids)

    def rollback(self, n: int) -> None:
        """Take back the last n accepted tokens (rejected speculative drafts)."""
        if not 0 <= n <= len(self._steps):
            raise ValueError(f"cannot roll back {n} of {len(self._steps)} accepted tokens")
        if n == 0:
            return
        undone = self._steps[-n:]
        del self._steps[-n:]
        consumed = sum(s.consumed for s in undone)
        if consumed and not self.matcher.rollback(consumed):
            raise ConstraintError(f"the matcher could not roll back {consumed} tokens: {self.matcher.get_error()}")
        first = undone[0]
        self.waiting = first.waiting_before
        self._buffer = self._buffer[:first.buffer_len_before]
        self._pieces = [p for p in self._pieces if p[2] <= len(self._buffer)]

    def draft_prefix(self, draft: Sequence[int]) -> int:
        """How many leading tokens of a speculative draft the grammar allows (it is not advanced)."""
        if self.waiting:
            return len(draft)  # unconstrained until triggered; the verified tokens go through accept()
        return self.matcher.validate_tokens(list(draft))

    # -- state ----------------------------------------------------------------------------------------------

    def is_accepting(self) -> bool:
        """Whether the output so far is complete for the grammar (EOS is allowed now). A lazy grammar that
        never triggered constrains nothing, so it is complete."""
        return self.waiting or self.matcher.is_accepting()

    def is_stopped(self) -> bool:
        """Whether nothing but EOS can follow: the engine ends the generation (llama.cpp stops on EOS)."""
        return not self.waiting and self.matcher.is_stopped()

    @property
    def n_accepted(self) -> int:
        return len(self._steps)


def apply_allowed(logits: np.ndarray, allowed: np.ndarray) -> None:
    """-inf for every token not allowed; ids past the mask (a padded output) are never allowed."""
    n = allowed.shape[-1]
    np.putmask(logits[..., :n], ~allowed, -np.inf)
    logits[..., n:] = -np.inf

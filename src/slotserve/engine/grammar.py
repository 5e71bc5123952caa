"""Per-generation constraints, built on the caller's thread before a request is queued.

A grammar that compiles as text can still fail against this model's vocabulary (a special-token name it
lacks): that must be a 400 before any stream starts, so the engine builds each generation's `Constraint`
in submit(), not on its own thread. Compiling takes milliseconds; a fresh copy of an already compiled
grammar takes microseconds, so the compiled ones are kept by spec: the n completions of one request
(n_cmpl) and clients that send the same schema every time compile it once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from ..constraint import Constraint, ConstraintError, ConstraintSpec, GrammarVocab
from .tasks import EngineError, ErrorKind


class Grammars:
    """The model's grammar vocabulary and its recently compiled constraints. Safe to call from any thread."""
    N_KEPT = 16  # compiled grammars kept (each holds its parser tables: tens of KB)

    def __init__(self, vocab: GrammarVocab | Callable[[], GrammarVocab]):
        """vocab: built once at model load, or a function building it at the first constrained request."""
        self._vocab = vocab
        self._compiled: OrderedDict[ConstraintSpec, Constraint] = OrderedDict()  # pristine: never advanced
        self._lock = threading.Lock()

    @property
    def vocab(self) -> GrammarVocab:
        with self._lock:
            if not isinstance(self._vocab, GrammarVocab):
                self._vocab = self._vocab()
            return self._vocab

    def new(self, spec: ConstraintSpec) -> Constraint:
        """A constraint for one generation, at the start of its output; a spec this vocabulary cannot serve is
        an EngineError (invalid_request) naming the problem."""
        vocab = self.vocab
        with self._lock:
            compiled = self._compiled.get(spec)
            if compiled is not None:
                self._compiled.move_to_end(spec)
                return compiled.fork()
        try:
            compiled = Constraint(spec, vocab)
        except ConstraintError as exc:
            raise EngineError(ErrorKind.INVALID_REQUEST, str(exc)) from None
        with self._lock:
            self._compiled[spec] = compiled
            while len(self._compiled) > self.N_KEPT:
                self._compiled.popitem(last=False)
            return compiled.fork()

"""Next-token masks of every constrained slot in a batch, computed together and off the GIL.

llguidance computes masks in Rust with the GIL released (LLMatcher.unsafe_compute_mask_ptr and
LLExecutor, which spreads several matchers over its own threads). The mask for step t+1 depends only on
the tokens accepted at step t, as does the forward pass of step t+1, so the engine can start the masks
on a worker thread, run the forward, and only then wait for them: the mask costs nothing on the critical
path unless it takes longer than the forward.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import llguidance
import numpy as np

from .matcher import Constraint
from .vocab import GrammarVocab


class ConstraintMasks:
    """Bitmask rows for a batch: row i belongs to constraints[i] (None: an unconstrained slot, all ones)."""

    def __init__(self, vocab: GrammarVocab, n_threads: int | None = None):
        self.vocab = vocab
        self._executor = llguidance.LLExecutor(n_threads)
        self._worker: ThreadPoolExecutor | None = None

    def compute(self, constraints: Sequence[Constraint | None]) -> np.ndarray:
        """(len(constraints), n_words) int32 bitmasks, bit t of row i set when token t is allowed."""
        rows = np.full((len(constraints), self.vocab.n_words), -1, dtype=np.int32)
        active = [(c, i) for i, c in enumerate(constraints) if c is not None and c.active]
        if len(active) == 1:  # one matcher: no need for the executor's fan-out
            c, i = active[0]
            c.fill_bitmask(rows[i])
        elif active:
            self._executor.unsafe_compute_mask_ptr([(c.matcher, i) for c, i in active], rows.ctypes.data,
                                                   rows.shape[1] * 4, rows.shape[0])
        return rows

    def compute_async(self, constraints: Sequence[Constraint | None]) -> Future[np.ndarray]:
        """compute() on a worker thread, to overlap the forward pass. Until the future is done the
        constraints must not be accepted into or rolled back."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="slotserve-grammar")
        return self._worker.submit(self.compute, list(constraints))

    def apply(self, logits: np.ndarray, bitmasks: np.ndarray) -> None:
        """-inf on the disallowed tokens of each logits row, in place: logits (B, n) with bitmasks (B, n_words),
        or one row with one bitmask row."""
        n = self.vocab.n_vocab
        allowed = np.unpackbits(bitmasks.view(np.uint8), axis=-1, bitorder="little", count=n).view(bool)
        np.putmask(logits[..., :n], ~allowed, -np.inf)
        logits[..., n:] = -np.inf

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

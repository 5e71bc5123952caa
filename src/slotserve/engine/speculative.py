"""Speculative decoding: prompt-lookup drafts, and the verification of any draft by the target model.

Decoding one token reads every weight once; verifying a draft of k tokens in the same forward reads
them once too, and verification keeps only tokens the model's own sampler would have produced, so
the output is unchanged while accepted drafts come almost for free. As in gpt-fast, drafting and
verifying sit on top of the forward: the scheduler only adds the draft to a decode segment.

Why verify() is exact for sampled requests too. Every drafter here (prompt lookup, a draft model's argmax)
proposes a token x deterministically: q = the point mass on x. Speculative sampling (Leviathan et al.,
Chen et al.) accepts x with probability min(1, p(x)/q(x)) = p(x), where p is the target's distribution
after the whole sampler chain, and on rejection draws from norm(max(0, p - q)): p(y) for y != x, 0 for x,
renormalized by 1 - p(x). Drawing y from p once and accepting iff y == x realizes exactly that: y == x has
probability p(x), and given y != x, y has probability p(y) / (1 - p(x)). So verify() draws each row's
token with the request's own sampler (one uniform per row, as plain decoding draws one per token) and
compares. Two things follow beyond the distribution: a seed's stream of uniforms lines up with plain
decoding, so a seeded request gives the same tokens with or without drafts (unless float rounding of the
wider forward moves a CDF boundary across a draw); and the same seed gives the same output run to run.
"""
from __future__ import annotations

from array import array
from typing import Callable, Protocol, TypeVar

import numpy as np


def find_draft(context: list[int], max_draft: int, ngram_max: int = 3, ngram_min: int = 2) -> list[int]:
    """Tokens that followed the latest earlier occurrence of the context's last n-gram (longest n first)."""
    if max_draft <= 0 or len(context) <= ngram_min:
        return []
    # the search runs every decode step: bytes.rfind over packed int32s is a C loop, not a Python one
    data = array("i", context).tobytes()
    for n in range(min(ngram_max, len(context) - 1), ngram_min - 1, -1):
        tail = data[-4 * n:]
        end = 4 * (len(context) - 1)  # occurrences must end before the last token: not the tail itself
        while (at := data.rfind(tail, 0, end)) != -1:
            if at % 4 == 0:  # a match on token boundaries
                start = at // 4 + n
                return context[start:start + max_draft]
            end = at + 4 * n - 1  # misaligned: look further left
    return []


class PromptLookup:
    """One generation's drafter: prompt-lookup drafts, paused after drafts the model refuted.

    A refuted draft cost a wider forward for nothing: after each one in a row it waits twice as many
    steps (up to MAX_PAUSE) before drafting again; an accepted token resets the wait."""
    MAX_PAUSE = 64

    def __init__(self, n_draft: int):
        self.n_draft = n_draft  # most tokens per draft
        self.pause = 0  # decode steps to go without drafting
        self.backoff = 1

    def draft(self, cached: list[int], next_token: int, room: int, limit: int) -> list[int]:
        """Draft tokens to follow the slot's cached tokens and the next input token. room: what the step's
        batch has left; limit: what the generation can still use (tokens to n_predict, free cache rows)."""
        if room <= 0:
            return []
        if self.pause > 0:
            self.pause -= 1
            return []
        n = min(room, self.n_draft, limit)
        return find_draft(cached + [next_token], n) if n > 0 else []

    def feedback(self, n_accepted: int) -> None:
        if n_accepted:
            self.backoff = 1
        else:
            self.pause = self.backoff
            self.backoff = min(self.MAX_PAUSE, 2 * self.backoff)


class HasToken(Protocol):
    token: int


C = TypeVar("C", bound=HasToken)


def verify(draft: list[int], rows: np.ndarray, choose: Callable[[np.ndarray], C]) -> list[C]:
    """The target model's choices along one verifying forward, for as long as they confirm the draft.

    rows[i] are the logits after the input token and draft[:i] (len(draft) + 1 rows). Row i's choice is
    made only if every earlier one matched its draft token, since choosing moves the sampler's state.
    The last choice returned is the model's own next token (a correction, or one past a fully accepted
    draft), so n_accepted = len(result) - 1. `choose` samples from the request's full sampler chain (greedy
    or not): see the module docstring for why accepting a draft token iff the sample equals it is the
    speculative-sampling rule for a deterministic draft."""
    chosen: list[C] = []
    for i, row in enumerate(rows):
        chosen.append(choose(row))
        if i == len(draft) or chosen[-1].token != draft[i]:
            break
    return chosen


def next_draft(gen, cache, room: int, n_draft: int) -> list[int]:
    """Tokens to verify with this step's decode of a generation (room: what is left of the batch; gen a
    slot.Generation, cache its slot's KVCache): its drafter's proposal, cut where the grammar refuses."""
    if gen.drafter is None:
        return []
    left = n_draft if gen.n_remain is None else gen.n_remain
    draft = gen.drafter.draft(cache.tokens, gen.last_token, room, min(left - 1, cache.n_free - 2))
    if draft and gen.constraint is not None:
        draft = draft[:gen.constraint.draft_prefix(draft)]  # tokens the grammar refuses cannot be confirmed
    return draft

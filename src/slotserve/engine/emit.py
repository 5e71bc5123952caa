"""A generation's next token: choosing it (sampling and probabilities), then delivering it (text,
stop checks, timings, the stream). Speculative verification chooses along several rows before any
of them is delivered, so the two are separate steps."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..model.tokenizer import Tokenizer
from .slot import Generation
from .tasks import StopReason, TokenOut


@dataclass(frozen=True)
class Choice:
    token: int
    probs: list[tuple[int, float]] | None = None  # top-n (token, prob) when the request asked for n_probs
    prob: float | None = None  # the chosen token's probability, with probs


def choose(gen: Generation, logits: np.ndarray) -> Choice:
    """Sample the next token from one row of logits and move the sampler past it."""
    token = gen.sampler.sample(logits)
    gen.sampler.accept(token)
    n_probs = gen.task.request.n_probs
    if n_probs <= 0:
        return Choice(token)
    # after accept(): post_sampling_probs report the candidates of the sample just made
    return Choice(token, gen.sampler.top_probs(logits, n_probs), gen.sampler.token_prob(logits, token))


def deliver(gen: Generation, choice: Choice, tokenizer: Tokenizer, context_full: bool) -> StopReason:
    """Add a chosen token to the generation and send it to a streaming client; say whether it ends the
    generation. context_full: the token could not be evaluated (the cache is full, no --context-shift)."""
    req, token = gen.task.request, choice.token
    gen.generated.append(token)
    piece = tokenizer.token_to_piece(token, special=False)
    out = TokenOut(token=token, text="", piece=piece, probs=choice.probs, prob=choice.prob)
    if len(gen.generated) == 1:
        out.cache_n = gen.timings.cache_n
    if req.timings_per_token:
        out.timings = replace(gen.timings, predicted_n=len(gen.generated),
                              predicted_ms=(time.perf_counter() - gen.t_prompt_done) * 1e3)
    if req.n_probs > 0:
        gen.probs.append(out)

    stop = StopReason.NONE
    if tokenizer.is_eog(token) and not req.sampling.ignore_eos:
        stop = StopReason.EOS
    else:
        out.text = gen.text.push(piece)
        if gen.text.stopping_word:
            stop = StopReason.WORD
        elif context_full:
            stop, gen.truncated = StopReason.LIMIT, True
        elif gen.n_remain is not None and gen.n_remain <= 0:
            stop = StopReason.LIMIT
    if stop is not StopReason.NONE:
        out.text += gen.text.finish()
    if req.stream:  # a non-streaming client reads only the result: spare it a wake-up per token
        gen.task.sink(out)
    return stop

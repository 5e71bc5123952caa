"""A generation's next token: choosing it (sampling and probabilities), then delivering it (text,
stop checks, timings, the stream). Speculative verification chooses along several rows before any
of them is delivered, so the two are separate steps."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from ..constraint import ConstraintError, sample_constrained
from ..model.tokenizer import Tokenizer
from .slot import Generation, Slot
from .tasks import CompletionResult, PromptProgress, StopReason, Timings, TokenOut

log = logging.getLogger("slotserve.engine")


@dataclass(frozen=True)
class Choice:
    token: int
    probs: list[tuple[int, float]] | None = None  # top-n (token, prob) when the request asked for n_probs
    prob: float | None = None  # the chosen token's probability, with probs


def choose(gen: Generation, logits: np.ndarray) -> Choice:
    """Sample the next token from one row of logits and move the sampler (and the constraint) past it.
    Raises ConstraintError when the grammar allows nothing the sampler can draw (all of it biased away), or a
    lazy grammar's trigger text does not fit it."""
    constraint = gen.constraint
    token, used = sample_constrained(gen.sampler, logits, constraint)
    if used is not logits and not constraint.allows(token):  # drawn from the masked logits, yet refused
        raise ConstraintError(f"logit_bias leaves no token the {constraint.spec.source} allows")
    gen.sampler.accept(token)
    if constraint is not None:
        constraint.accept(token)
    n_probs = gen.task.request.n_probs
    if n_probs <= 0:
        return Choice(token)
    # llama-server reports the raw logits' distribution, the grammar's mask not applied; with
    # post_sampling_probs, the candidates of the pass the token came from (the masked one after a refusal).
    # After accept(): post_sampling_probs report the candidates of the sample just made.
    seen = used if gen.sampler.params.post_sampling_probs else logits
    return Choice(token, gen.sampler.top_probs(seen, n_probs), gen.sampler.token_prob(seen, token))


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
        elif req.sampling.ignore_eos and gen.constraint is not None and gen.constraint.is_stopped():
            # the output is complete: the grammar allows only end-of-generation next, which ignore_eos bans
            stop = StopReason.EOS
    if stop is not StopReason.NONE:
        out.text += gen.text.finish()
    if req.stream:  # a non-streaming client reads only the result: spare it a wake-up per token
        gen.task.sink(out)
    return stop


def report_progress(gen: Generation, n_past: int, now: float) -> None:
    """Tell a streaming client that asked (return_progress) how much of its prompt is evaluated (n_past: the
    slot's cache length now)."""
    req = gen.task.request
    if not (req.stream and req.return_progress):
        return
    n_cache = gen.timings.cache_n
    timings = None
    if req.timings_per_token:
        n_done = n_past - n_cache
        timings = Timings(cache_n=n_cache, prompt_n=n_done, prompt_ms=(now - gen.t_start) * 1e3 if n_done else 0.0)
    gen.task.sink(PromptProgress(total=len(gen.prompt), cache=n_cache, processed=n_past,
                                 time_ms=int((now - gen.t_start) * 1e3), timings=timings))


def completion_result(slot: Slot, stop: StopReason) -> CompletionResult:
    """The answer of the slot's generation, which ends here with `stop` (its timings completed, one log line)."""
    gen = slot.gen
    t = gen.timings
    t.predicted_n = len(gen.generated)
    if gen.generated:  # as llama-server: no generation, no generation time
        t.predicted_ms = (time.perf_counter() - gen.t_prompt_done) * 1e3
    log.info("slot %d, task %d: prompt %d tokens (%d cached) in %.1f ms, generated %d in %.1f ms (%.1f tok/s), "
             "stop: %s", slot.id, gen.task.id, t.prompt_n, t.cache_n, t.prompt_ms, t.predicted_n, t.predicted_ms,
             t.as_dict()["predicted_per_second"], stop)
    return CompletionResult(
        id_slot=slot.id, content=gen.text.text, tokens=list(gen.generated), probs=gen.probs,
        stop_type=stop, stopping_word=gen.text.stopping_word, truncated=gen.truncated,
        tokens_evaluated=len(gen.prompt), tokens_cached=slot.cache.n_past, timings=t)

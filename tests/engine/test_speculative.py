"""Prompt-lookup speculative decoding: drafts from the context, and greedy text unchanged by them."""
import numpy as np
import pytest

from slotserve.engine.speculative import PromptLookup, find_draft, verify
from slotserve.model.forward import Llama, Segment
from slotserve.model.sampling import SamplingParams

from engine_helpers import complete, loaded, new_engine  # noqa: F401 (loaded: a fixture)


def test_draft_continues_the_latest_earlier_occurrence():
    ctx = [1, 5, 6, 7, 8, 9, 2, 5, 6, 7, 3, 4, 5, 6]
    assert find_draft(ctx, 3) == [7, 3, 4]  # (5, 6) last seen before the tail at index 7
    assert find_draft(ctx, 10) == [7, 3, 4, 5, 6]
    assert find_draft([1, 2, 3, 4], 5) == []
    assert find_draft(ctx, 0) == []


def test_longer_ngram_wins():
    ctx = [9, 1, 2, 50, 8, 1, 2, 60, 9, 1, 2]
    assert find_draft(ctx, 1) == [50]  # (9, 1, 2) matches at the start, though (1, 2) is more recent


@pytest.mark.parametrize("prompt", ["Once upon a time", "The little dog was very happy ", " Hello world",
                                    "Tom had a red ball. Tom had a red ball. Tom had a red ball."])
def test_speculation_leaves_greedy_text_unchanged(loaded, prompt):
    lm = loaded
    eng = new_engine(lm, n_parallel=2, n_ctx_slot=512)
    try:
        greedy = SamplingParams(temperature=0)
        plain = complete(eng, lm.tokenizer, prompt, n_predict=200, speculative=False, sampling=greedy)
        start = eng.snapshot.stats.n_draft_accepted
        fast = complete(eng, lm.tokenizer, prompt, n_predict=200, cache_prompt=False, sampling=greedy)
        assert fast.tokens == plain.tokens and fast.content == plain.content
        assert fast.tokens_cached == plain.tokens_cached
        accepted = eng.snapshot.stats.n_draft_accepted - start
    finally:
        eng.stop()
    if "Tom had" in prompt:
        assert accepted > 0  # repetitive text: drafts are accepted


def test_byte_matches_across_token_boundaries_are_not_matches():
    # 261, 512, 256 pack to bytes 05 01 00 00 | 00 02 00 00 | 00 01 00 00: the tail (1, 2) packs to
    # 01 00 00 00 02 00 00 00, which appears there one byte off a token boundary
    assert find_draft([261, 512, 256, 9, 1, 2], 4) == []
    assert find_draft([261, 512, 256, 1, 2, 7, 1, 2], 4) == [7, 1, 2]


# ---- the drafter and verify(), without a model --------------------------------------------------------------

class Pick:
    """A choice as the engine makes it: a token (verify only reads .token)."""

    def __init__(self, token):
        self.token = token


def greedy_rows(tokens, n_vocab=16):
    """Logit rows whose argmax is each of tokens in turn."""
    return np.eye(n_vocab, dtype=np.float32)[tokens]


def greedy_choice(calls: list):
    """A choose() that takes the argmax and counts its calls."""
    def choose(row):
        calls.append(row)
        return Pick(int(np.argmax(row)))
    return choose


def test_verify_accepts_a_confirmed_draft_and_adds_the_models_next_token():
    calls = []
    chosen = verify([3, 4, 5], greedy_rows([3, 4, 5, 9]), greedy_choice(calls))
    assert [c.token for c in chosen] == [3, 4, 5, 9]  # n_accepted 3, and the bonus token
    assert len(calls) == 4


def test_verify_stops_choosing_at_the_first_refuted_token():
    calls = []
    chosen = verify([3, 4, 5], greedy_rows([3, 7, 5, 9]), greedy_choice(calls))
    assert [c.token for c in chosen] == [3, 7]  # n_accepted 1; 7 is the correction
    assert len(calls) == 2  # rows after the refutation are never sampled: the sampler would move past them


def test_verify_without_a_draft_is_one_plain_choice():
    assert [c.token for c in verify([], greedy_rows([6]), greedy_choice([]))] == [6]


def test_drafter_backs_off_after_refuted_drafts_and_resets_on_acceptance():
    ctx = [1, 2, 3, 4, 1, 2]  # (1, 2) seen before: draft 3, 4, ...
    drafter = PromptLookup(n_draft=8)
    assert drafter.draft(ctx[:-1], ctx[-1], room=8, limit=2) == [3, 4]
    drafter.feedback(0)  # refuted: skip one step
    assert drafter.draft(ctx[:-1], ctx[-1], room=8, limit=8) == []
    assert drafter.draft(ctx[:-1], ctx[-1], room=8, limit=8) == [3, 4, 1, 2]
    drafter.feedback(0)  # refuted again: skip two
    assert [drafter.draft(ctx[:-1], ctx[-1], 8, 8) for _ in range(3)] == [[], [], [3, 4, 1, 2]]
    drafter.feedback(2)  # accepted: the next refutation costs one step again
    drafter.feedback(0)
    assert drafter.pause == 1


def test_drafter_waits_without_room_in_the_batch():
    drafter = PromptLookup(n_draft=8)
    drafter.feedback(0)
    assert drafter.draft([1, 2, 3, 1], 2, room=0, limit=8) == []
    assert drafter.pause == 1  # no room is not a skipped step
    assert drafter.draft([1, 2, 3, 1], 2, room=8, limit=8) == []
    assert drafter.draft([1, 2, 3, 1], 2, room=8, limit=8) == [3, 1, 2]
    assert drafter.draft([1, 2, 3, 1], 2, room=2, limit=8) == [3, 1]
    assert PromptLookup(n_draft=1).draft([1, 2, 3, 1], 2, room=8, limit=8) == [3]


def test_a_verifying_forward_gives_a_row_per_token_and_a_plain_one_row(loaded):
    """The forward's shape contract speculation relies on: logits are 2-D either way."""
    lm = loaded
    model = Llama(lm.hparams, lm.weights)
    tokens = lm.tokenizer.tokenize("Once upon a time", True, True)
    plain, every = model.forward([Segment(model.new_cache(64, "f32"), tokens),
                                  Segment(model.new_cache(64, "f32"), tokens, all_logits=True)])
    assert plain.logits.shape == (1, lm.hparams.n_vocab)
    assert every.logits.shape == (len(tokens), lm.hparams.n_vocab)
    np.testing.assert_allclose(plain.logits[0], every.logits[-1], rtol=0, atol=1e-4)


def test_drafts_are_counted_in_the_published_stats(loaded):
    lm = loaded
    eng = new_engine(lm, n_parallel=1, n_ctx_slot=512)
    try:
        complete(eng, lm.tokenizer, "Tom had a red ball. Tom had a red ball. Tom had a red ball.", n_predict=64)
        stats = eng.snapshot.stats
    finally:
        eng.stop()
    assert stats.n_draft_steps > 0 and stats.n_draft_tokens >= stats.n_draft_steps
    assert 0 < stats.n_draft_accepted <= stats.n_draft_tokens

"""Prompt-lookup speculative decoding: drafts from the context, and greedy text unchanged by them."""
import pytest

from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.engine.speculative import find_draft
from slotserve.model.forward import Llama
from slotserve.model.loader import load_model
from slotserve.model.sampling import SamplingParams

from engine_helpers import complete, new_engine


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
def test_speculation_leaves_greedy_text_unchanged(stories_path, prompt):
    lm = load_model(stories_path)
    eng = Engine(Llama(lm.hparams, lm.weights), lm.tokenizer, EngineConfig(n_parallel=2, n_ctx_slot=512))
    eng.start()
    try:
        greedy = SamplingParams(temperature=0)
        plain = complete(eng, lm.tokenizer, prompt, n_predict=200, speculative=False, sampling=greedy)
        start = eng.stats.n_draft_accepted
        fast = complete(eng, lm.tokenizer, prompt, n_predict=200, cache_prompt=False, sampling=greedy)
        assert fast.tokens == plain.tokens and fast.content == plain.content
        assert fast.tokens_cached == plain.tokens_cached
        accepted = eng.stats.n_draft_accepted - start
    finally:
        eng.stop()
    if "Tom had" in prompt:
        assert accepted > 0  # repetitive text: drafts are accepted


def test_byte_matches_across_token_boundaries_are_not_matches():
    # 261, 512, 256 pack to bytes 05 01 00 00 | 00 02 00 00 | 00 01 00 00: the tail (1, 2) packs to
    # 01 00 00 00 02 00 00 00, which appears there one byte off a token boundary
    assert find_draft([261, 512, 256, 9, 1, 2], 4) == []
    assert find_draft([261, 512, 256, 1, 2, 7, 1, 2], 4) == [7, 1, 2]

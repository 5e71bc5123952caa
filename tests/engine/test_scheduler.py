"""The engine on the real stories260K model, without HTTP: slots, prefix reuse, batching, stops."""
import json

import numpy as np
import pytest

from conftest import shared_file
from engine_helpers import complete, loaded, new_engine, result_of, submit  # noqa: F401 (loaded: a fixture)
from slotserve.engine.tasks import (CompletionResult, EngineError, EraseResult, ErrorKind, SlotActionTask,
                                    StopReason, TokenOut)
from slotserve.kvcache.prompt_state import PromptState, load_into
from slotserve.model.forward import Llama, Segment
from slotserve.model.sampling import SamplingParams


@pytest.fixture
def engine(loaded):
    eng = new_engine(loaded, n_parallel=2, n_ctx_slot=256, n_batch=32)
    yield eng
    eng.stop()


def complete64(engine, tokenizer, prompt, **kw):
    """A request of the golden scenario's server (-n 64): the API applies that default, not the engine."""
    kw.setdefault("n_predict", 64)
    return complete(engine, tokenizer, prompt, **kw)


def golden_case(i):
    return json.loads(shared_file("golden", "stories260K.json").read_text())["cases"][i]


def test_prompt_cache_reuse_matches_llama_server(engine, loaded):
    tok = loaded.tokenizer
    first = complete64(engine, tok, "What is the capital of France?", id_slot=1)
    assert first.content == golden_case(0)["content"]
    assert (first.timings.prompt_n, first.timings.cache_n) == (21, 0)
    assert first.tokens_cached == 21 + 64 - 1  # the last sampled token is never evaluated
    second = complete64(engine, tok, "What is the capital of Germany?", id_slot=1)
    assert (second.timings.prompt_n, second.timings.cache_n) == (6, 16)
    third = complete64(engine, tok, "What is the capital of Germany?", id_slot=1)
    assert (third.timings.prompt_n, third.timings.cache_n) == (1, 21)
    assert third.content == second.content
    off = complete64(engine, tok, "What is the capital of Germany?", id_slot=1, cache_prompt=False)
    assert (off.timings.prompt_n, off.timings.cache_n) == (22, 0)


def test_a_prompt_the_cache_ends_with_starts_from_its_kept_logits(engine, loaded):
    """A request with n_predict 0 leaves the slot's cache at the end of its prompt, with the output
    after it. The same prompt then takes its first token from that output, without a forward pass:
    the answer and probabilities are those of evaluating the prompt afresh."""
    tok, prompt = loaded.tokenizer, "What is the capital of France?"
    warm = complete64(engine, tok, prompt, id_slot=0, n_predict=0)
    assert warm.tokens == [] and warm.tokens_cached == 21
    assert engine.slots[0].cache.logits is not None
    kept = complete64(engine, tok, prompt, id_slot=0, n_predict=8, n_probs=4)
    assert (kept.timings.prompt_n, kept.timings.cache_n) == (0, 21)
    fresh = complete64(engine, tok, prompt, id_slot=1, n_predict=8, n_probs=4, cache_prompt=False)
    assert (fresh.timings.prompt_n, fresh.timings.cache_n) == (21, 0)
    assert kept.tokens == fresh.tokens and kept.content == fresh.content
    for a, b in zip(kept.probs, fresh.probs):
        assert [t for t, _ in a.probs] == [t for t, _ in b.probs]
        np.testing.assert_allclose([p for _, p in a.probs], [p for _, p in b.probs], rtol=1e-5)

    # the slot's cache now runs past the prompt: llama-server's way, the last prompt token again
    again = complete64(engine, tok, prompt, id_slot=0, n_predict=8)
    assert (again.timings.prompt_n, again.timings.cache_n) == (1, 20)
    assert again.tokens == fresh.tokens


def test_kept_logits_with_n_predict_0_answer_at_once(engine, loaded):
    tok, prompt = loaded.tokenizer, "Once upon a time"
    complete64(engine, tok, prompt, id_slot=0, n_predict=0)
    again = complete64(engine, tok, prompt, id_slot=0, n_predict=0)
    n_prompt = len(tok.tokenize(prompt, True, True))
    assert (again.timings.prompt_n, again.timings.cache_n, again.tokens) == (0, n_prompt, [])
    assert engine.slots[0].cache.logits is not None


def test_streamed_pieces_add_up_to_the_content(engine, loaded):
    result, tokens = result_of(submit(engine, loaded.tokenizer, "Once upon a time", stream=True, n_predict=64)[0])
    assert "".join(t.text for t in tokens) == result.content == golden_case(1)["content"]
    assert [t.token for t in tokens] == result.tokens


def test_parallel_slots_give_what_each_gives_alone(engine, loaded):
    tok = loaded.tokenizer
    prompts = ["Once upon a time", "Lily and Ben went to the park."]
    alone = [complete64(engine, tok, p).content for p in prompts]
    outs = [submit(engine, tok, p, n_predict=64)[0] for p in prompts]
    together = [result_of(o)[0] for o in outs]
    assert [r.content for r in together] == alone
    assert {r.id_slot for r in together} == {0, 1}


def test_idle_slot_with_longest_prefix_is_chosen(engine, loaded):
    tok = loaded.tokenizer
    complete64(engine, tok, "Tom had a red ball.", id_slot=0)
    complete64(engine, tok, "Lily and Ben went to the park.", id_slot=1)
    again = complete64(engine, tok, "Lily and Ben went to the park. They")
    assert again.id_slot == 1 and again.timings.cache_n > 0


def test_stop_string_and_n_predict(engine, loaded):
    tok = loaded.tokenizer
    full = golden_case(0)["content"]
    r = complete64(engine, tok, "What is the capital of France?", stop=["inside"])
    assert r.stop_type is StopReason.WORD and r.stop_type == "word" and r.stopping_word == "inside"
    assert r.content == full[:full.index("inside")]
    r = complete64(engine, tok, "What is the capital of France?", n_predict=5)
    assert r.stop_type == "limit" and len(r.tokens) == 5


def test_prompt_longer_than_the_slot_is_refused_on_submit(engine, loaded):
    with pytest.raises(EngineError) as err:
        submit(engine, loaded.tokenizer, "Once upon a time " * 80)
    assert err.value.kind is ErrorKind.EXCEED_CONTEXT_SIZE and err.value.kind == "exceed_context_size"
    assert err.value.extra["n_ctx"] == 256 and err.value.extra["n_prompt_tokens"] > 256


def test_generation_stops_when_the_context_is_full(loaded):
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=40)
    try:
        r = complete(eng, loaded.tokenizer, "Once upon a time", sampling=SamplingParams(temperature=0, ignore_eos=True))
    finally:
        eng.stop()
    assert r.truncated and r.stop_type == "limit" and r.tokens_cached == 39


def test_cancelled_request_frees_its_slot(loaded):
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=2048)
    try:
        out, task = submit(eng, loaded.tokenizer, "Once upon a time", n_predict=-1, stream=True,
                           sampling=SamplingParams(temperature=0, ignore_eos=True))
        assert isinstance(out.get(timeout=30), TokenOut)
        task.cancelled.set()
        # the only slot is free again: a new request is served
        r = complete(eng, loaded.tokenizer, "Hello", n_predict=3)
        assert isinstance(r, CompletionResult) and r.id_slot == 0
    finally:
        eng.stop()


def test_slot_action_waits_for_a_busy_slot(engine, loaded):
    out, _ = submit(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=64)
    erase = SlotActionTask("erase", id_slot=0)
    engine.submit(erase)
    result = result_of(out)[0]
    # the erase ran after the generation, never in the middle of it
    assert erase.future.result(timeout=30) == EraseResult(id_slot=0, n_erased=result.tokens_cached)


def test_save_without_save_path_is_not_supported(engine):
    task = SlotActionTask("save", id_slot=0, filename="x.bin")
    engine.submit(task)
    with pytest.raises(EngineError) as err:
        task.future.result(timeout=30)
    assert err.value.kind == "not_supported"


def test_context_shift_keeps_generating_past_the_context(loaded):
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=64, context_shift=True)
    try:
        r = complete(eng, loaded.tokenizer, "Once upon a time", n_predict=150,
                     sampling=SamplingParams(temperature=0, ignore_eos=True))
        long_prompt = complete(eng, loaded.tokenizer, "Once upon a time " * 40, n_predict=4)
    finally:
        eng.stop()
    assert len(r.tokens) == 150 and r.truncated and r.stop_type == "limit"
    assert r.tokens_cached < 64
    assert long_prompt.truncated and long_prompt.tokens_evaluated < 64 and len(long_prompt.tokens) == 4


def test_shifted_cache_equals_one_evaluated_at_the_new_positions(loaded):
    """Re-rotating the moved keys gives (to rounding) the keys the shorter sequence would have had."""
    model = Llama(loaded.hparams, loaded.weights)
    tokens = loaded.tokenizer.tokenize("Once upon a time, there was a little girl named Lily. She loved to play.")
    n_keep, n_discard = 3, 7
    shifted = model.new_cache(128, "f32")
    model.forward([Segment(shifted, tokens)])
    model.shift_cache(shifted, n_keep, n_discard)
    fresh = model.new_cache(128, "f32")
    kept = tokens[:n_keep] + tokens[n_keep + n_discard:]
    model.forward([Segment(fresh, kept)])
    assert shifted.tokens == kept
    n = len(kept)
    # only the first layer's keys are the same function of the kept tokens; deeper ones saw the dropped tokens
    np.testing.assert_allclose(shifted.k[0, :n], fresh.k[0, :n], atol=2e-5)
    # V is untouched by the shift; it differs only in the last bit, as BLAS rounds differently for
    # the two batch sizes that produced it
    np.testing.assert_allclose(shifted.v[0, :n], fresh.v[0, :n], rtol=0, atol=1e-6)


def test_an_f16_caches_stored_rows_follow_every_change(loaded):
    """The float16 rows a save copies are the float32 rows narrowed, after forwards, a context shift, a
    discard, a prompt-cache load and an import; and the float32 rows cannot be written around them."""
    def consistent(cache):
        n = cache.n_past
        k16, v16 = cache.stored
        assert k16.dtype == np.float16 and n > 0
        np.testing.assert_array_equal(k16[:, :n].astype(np.float32), cache.k[:, :n])
        np.testing.assert_array_equal(v16[:, :n].astype(np.float32), cache.v[:, :n])

    model = Llama(loaded.hparams, loaded.weights)
    tokens = loaded.tokenizer.tokenize("Once upon a time, there was a little girl named Lily. She loved to play.")
    cache = model.new_cache(128, "f16")
    model.forward([Segment(cache, tokens)])
    model.forward([Segment(cache, [tokens[-1]])])
    consistent(cache)
    model.shift_cache(cache, 3, 7)
    consistent(cache)
    cache.discard(2, 1)
    consistent(cache)
    other = model.new_cache(128, "f16")
    model.forward([Segment(other, tokens[:5])])
    load_into(other, PromptState.from_cache(cache), cache.n_past)
    consistent(other)
    other.import_state(cache.export_state())
    consistent(other)
    with pytest.raises(ValueError, match="read-only"):
        cache.k[0, 0] = 1.0

"""A prompt served from either cache tier continues exactly as a fresh evaluation (stories260K)."""
import numpy as np
import pytest

from slotserve.kvcache.disk_tier import DiskTier
from slotserve.kvcache.persist import ModelIdentity
from slotserve.kvcache.prompt_state import load_into
from slotserve.kvcache.ram_tier import RamTier
from slotserve.model.forward import Llama, Segment
from slotserve.model.loader import load_model

N_CTX = 128


@pytest.fixture(scope="module")
def loaded(stories_path):
    return load_model(stories_path)


@pytest.fixture(scope="module")
def model(loaded):
    return Llama(loaded.hparams, loaded.weights)


def evaluate(model, cache, tokens):
    return model.forward([Segment(cache, list(tokens))])[0].logits[-1]  # forward: 2-D, one row here


def greedy(model, cache, logits, n=8):
    """n greedy tokens and the logits each was picked from."""
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append((tok, logits.copy()))
        logits = evaluate(model, cache, [tok])
    return out


def same_run(a, b):
    return [t for t, _ in a] == [t for t, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_ram_and_disk_hits_continue_as_a_fresh_evaluation(model, loaded, tmp_path, kv_type):
    tok = loaded.tokenizer
    story = tok.tokenize("Once upon a time there was a little girl who liked to play in the park with her dog.")
    stored = story + tok.tokenize(" One day the dog ran away.", add_special=False)
    asked = story + tok.tokenize(" She found a red ball under a tree.", add_special=False)
    n = next(i for i, (a, b) in enumerate(zip(stored, asked)) if a != b)
    assert n >= len(story)

    hp = loaded.hparams
    identity = ModelIdentity(loaded.name, loaded.fingerprint, hp.n_layer, hp.n_embd_kv, hp.n_vocab)
    disk = DiskTier(tmp_path, identity, kv_type)
    ram = RamTier(64, spill=disk.submit_write)
    slot = model.new_cache(N_CTX, kv_type)
    evaluate(model, slot, stored)
    ram.store_cache(slot)

    # what the slot itself would give, reusing its own prefix: a tier hit must give exactly this
    slot.truncate(n)
    want = greedy(model, slot, evaluate(model, slot, asked[n:]))
    fresh = model.new_cache(N_CTX, kv_type)  # and a fresh evaluation, as close as chunking allows
    got = greedy(model, fresh, evaluate(model, fresh, asked))
    assert [t for t, _ in got] == [t for t, _ in want]
    if kv_type == "f32":  # (an f16 cache rounds rows that chunking moved by an ulp: see tests/model)
        for (_, a), (_, b) in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)

    hit = ram.lookup(asked)
    assert hit.n_match == n
    from_ram = model.new_cache(N_CTX, kv_type)
    ram.load_into(from_ram, hit)  # a longer state, truncated to the shared prefix
    assert same_run(greedy(model, from_ram, evaluate(model, from_ram, asked[n:])), want)

    ram.flush()
    disk.close()
    restarted = DiskTier(tmp_path, identity, kv_type)
    hit = restarted.lookup(asked)
    state = restarted.load(hit)
    from_disk = model.new_cache(N_CTX, kv_type)
    load_into(from_disk, state, hit.n_match)
    assert same_run(greedy(model, from_disk, evaluate(model, from_disk, asked[n:])), want)
    restarted.close()


def test_a_whole_state_brings_its_logits_from_both_tiers(model, loaded, tmp_path):
    tok = loaded.tokenizer
    prompt = tok.tokenize("The cat sat on the mat and looked at the moon.")
    slot = model.new_cache(N_CTX)
    logits = evaluate(model, slot, prompt)
    hp = loaded.hparams
    disk = DiskTier(tmp_path, ModelIdentity(loaded.name, loaded.fingerprint, hp.n_layer, hp.n_embd_kv,
                                            hp.n_vocab), "f16")
    ram = RamTier(64, spill=disk.submit_write)
    ram.store_cache(slot)
    again = model.new_cache(N_CTX)
    ram.load_into(again, ram.lookup(prompt))
    assert np.array_equal(again.logits, logits)  # the first token needs no forward pass
    ram.flush()
    state = disk.load(disk.lookup(prompt))
    load_into(again, state, len(prompt))
    assert np.array_equal(again.logits, logits)
    disk.close()

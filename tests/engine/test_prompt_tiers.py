"""The engine with prompt-cache tiers, on stories260K without HTTP: llama-server's update_cache rules
for the slot a task takes, idle slots stored (and cleared with a unified KV cache), a disk hit parked
off the step while other slots go on, the flush at shutdown."""
import queue
import threading

import pytest

from engine_helpers import complete, loaded, new_engine, result_of, submit  # noqa: F401 (loaded: a fixture)
from slotserve.engine.prompt_tiers import pick_slot
from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.engine.slot import Phase, Slot
from slotserve.engine.tasks import CompletionRequest, CompletionResult
from slotserve.kvcache.cache import KVCache
from slotserve.kvcache.disk_tier import DiskTier
from slotserve.kvcache.persist import ModelIdentity
from slotserve.kvcache.prompt_cache import PromptCache
from slotserve.kvcache.ram_tier import RamTier
from slotserve.model.forward import Llama

STORY = ("Once upon a time there was a little girl who loved to play in the park with her dog. Every morning "
         "they ran to the big tree by the pond and looked for ducks.")  # 61 tokens: worth a disk read


def slots_holding(*contents: list[int]) -> list[Slot]:
    slots = [Slot(i, KVCache(1, 1, 2, 64)) for i in range(len(contents))]
    for i, (slot, tokens) in enumerate(zip(slots, contents)):
        slot.cache.tokens = list(tokens)
        slot.t_last_used = float(i)
    return slots


def test_update_cache_follows_llama_server():
    a, b = list(range(10, 30)), list(range(50, 60))
    slots = slots_holding(a, b)
    pick = pick_slot(slots, CompletionRequest(a + [1, 2]), 0.1)  # similar, keeps all of slot 0
    assert (pick.slot.id, pick.n_shared, pick.update_cache) == (0, 20, False)
    pick = pick_slot(slots, CompletionRequest(a[:8] + [7] * 20), 0.1)  # similar, but keeps 8 of 20: stored first
    assert (pick.slot.id, pick.n_shared, pick.update_cache) == (0, 8, True)
    pick = pick_slot(slots, CompletionRequest([3, 4, 5]), 0.1)  # nothing similar: the LRU slot, stored first
    assert (pick.slot.id, pick.update_cache) == (0, True)
    pick = pick_slot(slots, CompletionRequest(b + [1], id_slot=1), 0.1)  # the requested slot, its content kept
    assert (pick.slot.id, pick.update_cache) == (1, False)
    pick = pick_slot(slots, CompletionRequest(a, id_slot=1), 0.1)  # the requested slot holds something else
    assert (pick.slot.id, pick.update_cache) == (1, True)
    empty = slots_holding([])
    assert pick_slot(empty, CompletionRequest([1, 2], id_slot=0), 0.1).update_cache is False  # nothing to store


def identity(loaded) -> ModelIdentity:
    hp = loaded.hparams
    return ModelIdentity(loaded.name, loaded.fingerprint, hp.n_layer, hp.n_embd_kv, hp.n_vocab)


def tiered_engine(loaded, cache: PromptCache, **config) -> Engine:
    config = {"n_parallel": 2, "n_ctx_slot": 256, "n_batch": 32, **config}
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer, EngineConfig(**config), None, cache)
    eng.start()
    return eng


def test_idle_slots_are_stored_and_with_a_unified_cache_cleared(loaded):
    tok = loaded.tokenizer
    for unified in (False, True):
        cache = PromptCache(RamTier(16))
        eng = tiered_engine(loaded, cache, kv_unified=unified)
        try:
            first = complete(eng, tok, STORY, id_slot=0, n_predict=4)
            complete(eng, tok, "The quick brown fox", id_slot=1, n_predict=4)
            held = first.tokens_cached
            assert eng.slots[0].cache.n_past == (0 if unified else held)
            again = complete(eng, tok, STORY, n_predict=4)  # slot 0's state, back from RAM when it was cleared
            assert again.content == first.content and again.timings.cache_n == len(tok.tokenize(STORY, True, True)) - 1
            assert eng.snapshot.prompt_cache["ram"]["hits"] == (1 if unified else 0)
        finally:
            eng.stop()


def test_a_disk_hit_is_parked_while_other_slots_go_on(loaded, tmp_path):
    tok = loaded.tokenizer
    fresh = new_engine(loaded, n_parallel=2, n_ctx_slot=256, n_batch=32)
    try:
        expected = complete(fresh, tok, STORY + " One day", n_predict=8)
        other_expected = complete(fresh, tok, "The quick brown fox", n_predict=8)
    finally:
        fresh.stop()

    eng = tiered_engine(loaded, PromptCache(RamTier(16), DiskTier(tmp_path, identity(loaded), "f16")))
    complete(eng, tok, STORY, n_predict=4)
    eng.stop()  # writes the slots' states to disk
    assert list(tmp_path.glob("pc-*.bin"))

    disk = DiskTier(tmp_path, identity(loaded), "f16")
    eng = tiered_engine(loaded, PromptCache(RamTier(16), disk))
    try:
        gate = threading.Event()
        disk._io.submit(gate.wait)  # the I/O thread is busy: the read queues behind this
        parked, _ = submit(eng, tok, STORY + " One day", n_predict=8)
        other, _ = submit(eng, tok, "The quick brown fox", n_predict=8)
        assert result_of(other)[0].content == other_expected.content  # served while the read waits
        with pytest.raises(queue.Empty):
            parked.get(timeout=0.2)
        assert any(s.gen is not None and s.gen.phase is Phase.LOAD for s in eng.slots)
        gate.set()
        got = result_of(parked)[0]
        assert isinstance(got, CompletionResult) and got.content == expected.content
        assert got.timings.cache_n >= len(tok.tokenize(STORY, True, True)) - 1
        assert eng.snapshot.prompt_cache["disk"]["hits"] == 1
    finally:
        gate.set()
        eng.stop()

"""Slot save/restore through the engine, with the real model and real files."""
import json
import os
import queue
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_file
from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.engine.tasks import CompletionRequest, CompletionResult, CompletionTask, EngineError, SlotActionTask
from slotserve.kvcache.persist import ModelIdentity, SlotStore
from slotserve.kvcache.savedir import SaveDir
from slotserve.model.forward import Llama
from slotserve.model.loader import load_model
from slotserve.model.sampling import SamplingParams


@pytest.fixture(scope="module")
def loaded(stories_path):
    return load_model(stories_path)


def identity(lm):
    hp = lm.hparams
    return ModelIdentity(lm.name, lm.fingerprint, hp.n_layer, hp.n_embd_kv, hp.n_vocab)


@pytest.fixture
def engine(loaded, tmp_path):
    """The golden scenario's server: -c 512 -np 2 -b 32 -n 64 --slot-save-path tmp."""
    store = SlotStore(SaveDir(tmp_path), identity(loaded), n_stream=2)
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer,
                 EngineConfig(n_parallel=2, n_ctx_slot=256, n_batch=32), store)
    eng.start()
    yield eng
    eng.stop()


def complete(engine, tokenizer, prompt, id_slot, **kw):
    kw.setdefault("n_predict", 64)  # the server's -n 64, which the API applies before the engine sees a request
    out = queue.Queue()
    engine.submit(CompletionTask(CompletionRequest(tokenizer.tokenize(prompt, True, True),
                                                   SamplingParams(temperature=0), id_slot=id_slot, **kw), out.put))
    while True:
        item = out.get(timeout=60)
        if isinstance(item, (CompletionResult, EngineError)):
            return item


def action(engine, name, id_slot, filename=""):
    task = SlotActionTask(name, id_slot=id_slot, filename=filename)
    engine.submit(task)
    return task.future.result(timeout=60)


def slot_state(engine, id_slot):
    n = engine.snapshot.slots[id_slot].n_past  # published before the last action's answer
    cache = engine.slots[id_slot].cache
    logits = None if cache.logits is None else cache.logits.copy()
    return list(cache.tokens), cache.k[:, :n].copy(), cache.v[:, :n].copy(), logits


def assert_same_state(got, want):
    assert got[0] == want[0]
    for a, b in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(a, b)  # K, V and the logits (None == None too)


def scenario():
    return json.loads(shared_file("golden", "slot_scenario_stories260K.json").read_text())["steps"]


def test_llama_server_file_restores_and_continues_like_llama_server(engine, loaded, tmp_path):
    (tmp_path / "france.bin").write_bytes(shared_file("golden", "llama-server-slot-france.bin").read_bytes())
    restored = action(engine, "restore", 0, "france.bin")
    assert restored.n_restored == 84 and restored.n_read == 55280
    assert engine.slots[0].cache.logits is None  # llama-server files have no sidecar to keep them
    r = complete(engine, loaded.tokenizer, "What is the capital of Germany?", 0)
    expect = scenario()[4]["expect"]
    assert (r.timings.prompt_n, r.timings.cache_n) == (expect["prompt_n"], expect["cache_n"]) == (6, 16)
    assert r.content == expect["content"]


def test_our_file_of_the_france_slot_equals_llama_servers_tokens_and_layout(engine, loaded, tmp_path):
    complete(engine, loaded.tokenizer, "What is the capital of France?", 1)
    saved = action(engine, "save", 1, "slot1.bin")
    assert saved.n_saved == 84
    ours = (tmp_path / "slot1.bin").read_bytes()
    theirs = shared_file("golden", "llama-server-slot-france.bin").read_bytes()
    assert len(ours) == len(theirs) == saved.n_written
    # identical header, tokens and cell table; K/V values agree to f16 rounding of two float32 paths
    assert ours[:1400] == theirs[:1400]
    a, b = np.frombuffer(ours[1400:], np.uint8), np.frombuffer(theirs[1400:], np.uint8)
    assert (a != b).mean() < 0.5
    meta = json.loads((tmp_path / "slot1.bin.meta.json").read_text())
    assert meta["model_fingerprint"] == loaded.fingerprint and meta["n_tokens"] == 84


def test_save_restore_round_trip_into_another_slot(engine, loaded):
    complete(engine, loaded.tokenizer, "Once upon a time", 1)
    before = slot_state(engine, 1)
    action(engine, "save", 1, "a.bin")
    assert action(engine, "restore", 0, "a.bin").n_restored == len(before[0])
    assert_same_state(slot_state(engine, 0), before)


def test_restores_into_two_slots_keep_both(engine, loaded):
    """A restore fills the engine's scratch cache and swaps it with the slot's: the second restore
    must not reuse a cache the first one handed to a slot."""
    complete(engine, loaded.tokenizer, "Once upon a time", 0)
    first = slot_state(engine, 0)
    action(engine, "save", 0, "first.bin")
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", 0)
    second = slot_state(engine, 0)
    action(engine, "save", 0, "second.bin")
    action(engine, "restore", 0, "first.bin")
    action(engine, "restore", 1, "second.bin")
    for id_slot, want in ((0, first), (1, second)):
        assert_same_state(slot_state(engine, id_slot), want)
    assert engine.slots[0].cache is not engine.slots[1].cache


def test_the_same_prompt_after_a_restore_needs_no_forward(engine, loaded, tmp_path):
    """The sidecar keeps the logits after the cache's last token; restored, they give the same
    prompt its first token at once, and the same answer as the slot they were saved from."""
    prompt = "What is the capital of France?"
    complete(engine, loaded.tokenizer, prompt, 1, n_predict=0)
    saved = slot_state(engine, 1)
    assert saved[3] is not None
    action(engine, "save", 1, "warm.bin")
    entry = json.loads((tmp_path / "warm.bin.meta.json").read_text())["logits"]
    assert entry["n_tokens"] == 21 and entry["n_vocab"] == loaded.hparams.n_vocab
    action(engine, "restore", 0, "warm.bin")
    assert_same_state(slot_state(engine, 0), saved)
    restored = complete(engine, loaded.tokenizer, prompt, 0, n_predict=8)
    original = complete(engine, loaded.tokenizer, prompt, 1, n_predict=8)
    assert (restored.timings.prompt_n, restored.timings.cache_n) == (0, 21)
    assert restored.tokens == original.tokens


@pytest.mark.parametrize("damage", ["crc32", "n_tokens", "base64"])
def test_damaged_logits_in_a_sidecar_are_ignored_not_fatal(engine, loaded, tmp_path, caplog, damage):
    """The logits only save one token's forward: when they are unusable the cache is restored
    without them, a warning says why, and the same prompt evaluates its last token again."""
    prompt = "What is the capital of France?"
    complete(engine, loaded.tokenizer, prompt, 1, n_predict=0)
    action(engine, "save", 1, "warm.bin")
    side = tmp_path / "warm.bin.meta.json"
    meta = json.loads(side.read_text())
    entry = meta["logits"]
    if damage == "crc32":
        data = bytearray(entry["float32_base64"], "ascii")
        data[100] = ord("A") if data[100] != ord("A") else ord("B")
        entry["float32_base64"] = data.decode("ascii")
    elif damage == "n_tokens":
        entry["n_tokens"] = 20
    else:
        entry["float32_base64"] = "not base64!"
    side.write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="slotserve.kvcache"):
        assert action(engine, "restore", 0, "warm.bin").n_restored == 21
    assert "ignoring the logits" in caplog.text
    assert engine.slots[0].cache.logits is None
    again = complete(engine, loaded.tokenizer, prompt, 0, n_predict=4)
    assert (again.timings.prompt_n, again.timings.cache_n) == (1, 20)


def test_f16_file_restores_into_an_f32_cache(engine, loaded, tmp_path):
    complete(engine, loaded.tokenizer, "Once upon a time", 0)
    action(engine, "save", 0, "f16.bin")
    store = SlotStore(SaveDir(tmp_path), identity(loaded))
    cache = Llama(loaded.hparams, loaded.weights).new_cache(256, "f32")
    store.restore(cache, "f16.bin")
    np.testing.assert_array_equal(cache.k[:, :cache.n_past], engine.slots[0].cache.k[:, :cache.n_past])


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "foreign_model", "too_large", "missing", "traversal",
                                    "symlink_escape", "garbage"])
def test_bad_restore_is_refused_and_the_slot_is_unchanged(engine, loaded, tmp_path, damage):
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", 1)
    action(engine, "save", 1, "good.bin")
    complete(engine, loaded.tokenizer, "Tom had a red ball.", 0)
    before = slot_state(engine, 0)
    good = (tmp_path / "good.bin").read_bytes()
    name = "bad.bin"
    if damage == "truncate":
        (tmp_path / name).write_bytes(good[: len(good) // 2])
        expected = "truncated"
    elif damage == "flip_byte":
        (tmp_path / name).write_bytes(good)
        os.replace(tmp_path / "good.bin.meta.json", tmp_path / "bad.bin.meta.json")
        flipped = bytearray(good)
        flipped[len(good) - 10] ^= 0x40
        (tmp_path / name).write_bytes(bytes(flipped))
        expected = "crc32 mismatch"
    elif damage == "foreign_model":
        synth = load_model(shared_file("models", "synth-spm-19M-f16.gguf"))
        foreign = SlotStore(SaveDir(tmp_path), identity(synth))
        cache = Llama(synth.hparams, synth.weights).new_cache(64)
        cache.tokens = [1, 2, 3]
        foreign.save(cache, name)
        expected = "saved from another model"
    elif damage == "too_large":
        big = load_model(loaded.path)
        store = SlotStore(SaveDir(tmp_path), identity(big))
        cache = Llama(big.hparams, big.weights).new_cache(400)
        cache.tokens = [1] + [300] * 299
        store.save(cache, name)
        expected = "file holds 300 tokens, slot context is 256"
    elif damage == "missing":
        expected = "was not found"
    elif damage == "traversal":
        name = "../good.bin"
        expected = "filename"
    elif damage == "symlink_escape":
        outside = tmp_path.parent / f"outside-{os.getpid()}.bin"
        outside.write_bytes(good)
        (tmp_path / name).symlink_to(outside)
        expected = "symbolic link"
    else:
        (tmp_path / name).write_bytes(b"ggsq" + os.urandom(300))
        expected = "bad magic"
    with pytest.raises(EngineError) as err:
        action(engine, "restore", 0, name)
    assert err.value.kind == "invalid_request" and expected in err.value.message
    assert_same_state(slot_state(engine, 0), before)
    assert (tmp_path / "good.bin").read_bytes() == good or damage == "flip_byte"


def test_save_over_a_symlink_never_writes_outside(engine, loaded, tmp_path):
    outside = tmp_path.parent / f"victim-{os.getpid()}.txt"
    outside.write_text("precious")
    (tmp_path / "link.bin").symlink_to(outside)
    complete(engine, loaded.tokenizer, "Once upon a time", 0)
    with pytest.raises(EngineError):
        action(engine, "save", 0, "link.bin")
    assert outside.read_text() == "precious"


KILLED_SAVE = r"""
import os, sys, time
from slotserve.kvcache.savedir import SaveDir
d = SaveDir(sys.argv[1])
def slow_fsync(fd):  # a slow disk: the new bytes are written, the flush hangs, and then we are killed
    print("writing", flush=True)
    time.sleep(60)
os.fsync = slow_fsync
d.write_slot("slot.bin", b"NEW" * (1 << 20), {"n_tokens": 1})
"""


def test_a_save_killed_half_way_leaves_the_previous_file_intact(tmp_path):
    SaveDir(tmp_path).write_slot("slot.bin", b"OLD" * 1000, {"n_tokens": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "slot.bin").read_bytes() == b"OLD" * 1000
    assert any(p.name.startswith(".slot.bin.tmp") for p in tmp_path.iterdir())  # it did die mid-write
    d = SaveDir(tmp_path)  # a restarted server sweeps the dead save's temp file
    assert [f.name for f in d.list()] == ["slot.bin"]
    assert not any(".tmp" in p.name for p in tmp_path.iterdir())
    data, meta = d.read_slot("slot.bin")
    assert data == b"OLD" * 1000

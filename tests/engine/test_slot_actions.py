"""Slot actions off the engine thread: saves written from a snapshot, in order; restores swapped in whole;
actions whose client left dropped before they run; waiting actions timed out."""
import threading

import numpy as np
import pytest

from engine_helpers import complete, loaded, new_engine, result_of, submit  # noqa: F401 (fixture)
from slotserve.engine.tasks import CompletionResult, EngineError, SlotActionTask, TokenOut
from slotserve.kvcache.persist import ModelIdentity, SlotStore
from slotserve.kvcache.savedir import SaveDir
from slotserve.model.sampling import SamplingParams

ENDLESS = SamplingParams(temperature=0, ignore_eos=True)


@pytest.fixture
def engine(loaded, tmp_path):  # noqa: F811
    hp = loaded.hparams
    store = SlotStore(SaveDir(tmp_path, sync=False), ModelIdentity(loaded.name, loaded.fingerprint, hp.n_layer,
                                                                   hp.n_embd_kv, hp.n_vocab), n_stream=2)
    eng = new_engine(loaded, store, n_parallel=2, n_ctx_slot=256)
    yield eng
    eng.stop()


def queue_action(engine, name, id_slot=-1, filename="", **kw):
    task = SlotActionTask(name, id_slot=id_slot, filename=filename, **kw)
    engine.submit(task)
    return task


def action(engine, name, id_slot=-1, filename=""):
    return queue_action(engine, name, id_slot, filename).future.result(timeout=60)


def tokens_of(engine, id_slot):
    return list(engine.slots[id_slot].cache.tokens)  # read after an answer: the engine published it before


class HeldSlot:
    """A generation on `id_slot` whose first streamed token blocks the engine thread until release():
    meanwhile the slot is certainly busy, and whatever is submitted waits in the engine's inbox."""

    def __init__(self, engine, tokenizer, id_slot, **kw):
        self.entered, self.gate = threading.Event(), threading.Event()
        self.out, self.task = submit(engine, tokenizer, "Once upon a time", id_slot=id_slot, stream=True,
                                     sampling=ENDLESS, **kw)
        self.out_put = self.out.put
        self.task.sink = self._sink
        assert self.entered.wait(60)

    def _sink(self, item):
        if isinstance(item, TokenOut) and not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(60)
        self.out_put(item)

    def release(self):
        self.gate.set()


def test_a_restore_whose_client_left_is_dropped_and_leaves_the_slot_alone(engine, loaded, caplog):
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=4)
    action(engine, "save", 1, "other.bin")
    held = HeldSlot(engine, loaded.tokenizer, 0, n_predict=-1)
    restore = queue_action(engine, "restore", 0, "other.bin")
    restore.cancelled.set()  # the client gave up while the restore waited for the busy slot
    held.release()
    with caplog.at_level("INFO", logger="slotserve.engine"):
        result = result_of(held.out)[0]
        assert isinstance(result, CompletionResult)
        with pytest.raises(EngineError) as err:
            restore.future.result(timeout=60)
    assert "client disconnected" in err.value.message
    assert "slot 0: restore 'other.bin' dropped: its client disconnected before it ran" in caplog.text
    # the slot keeps what its generation left, not the file
    assert engine.slots[0].cache.n_past == result.tokens_cached
    assert tokens_of(engine, 0)[:len(held.task.request.prompt_tokens)] == held.task.request.prompt_tokens


def test_an_action_waiting_past_its_timeout_is_refused(engine, loaded):
    held = HeldSlot(engine, loaded.tokenizer, 0, n_predict=-1)
    erase = queue_action(engine, "erase", 0, timeout_s=0.0)
    held.release()
    with pytest.raises(EngineError) as err:
        erase.future.result(timeout=60)
    assert err.value.kind == "unavailable" and "stayed busy" in err.value.message
    held.task.cancelled.set()  # frees the slot; a save then finds what the generation left: never erased
    assert action(engine, "save", 0, "after.bin").n_saved > len(held.task.request.prompt_tokens)


def test_a_save_writes_the_slot_as_it_was_when_it_started(engine, loaded):
    """The save copies the slot and goes on: erasing and refilling the slot right after it, without
    waiting for its answer, changes nothing in the file."""
    complete(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=8)
    before = tokens_of(engine, 0)
    k_before = engine.slots[0].cache.k[:, :len(before)].copy()
    save = queue_action(engine, "save", 0, "a.bin")
    queue_action(engine, "erase", 0)
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=0, n_predict=8)
    assert save.future.result(timeout=60).n_saved == len(before)
    action(engine, "restore", 1, "a.bin")
    assert tokens_of(engine, 1) == before
    np.testing.assert_array_equal(engine.slots[1].cache.k[:, :len(before)], k_before)


def test_saves_of_one_name_land_in_order_and_a_restore_reads_the_last(engine, loaded):
    """Neither save is waited for before the restore is asked: it reads the second save, complete."""
    complete(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=8)
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=8)
    first, second = tokens_of(engine, 0), tokens_of(engine, 1)
    tasks = [queue_action(engine, "save", 0, "x.bin"), queue_action(engine, "save", 1, "x.bin"),
             queue_action(engine, "erase", 0), queue_action(engine, "restore", 0, "x.bin")]
    results = [t.future.result(timeout=60) for t in tasks]
    assert [results[0].n_saved, results[1].n_saved, results[3].n_restored] == [len(first), len(second), len(second)]
    assert tokens_of(engine, 0) == second


def test_a_restoring_slot_takes_no_completion_until_it_is_swapped_in(engine, loaded):
    """A completion asked for the slot right after its restore was starts from the restored cache."""
    complete(engine, loaded.tokenizer, "Once upon a time there was", id_slot=1, n_predict=8)
    saved = tokens_of(engine, 1)
    action(engine, "save", 1, "a.bin")
    action(engine, "erase", 0)
    restore = queue_action(engine, "restore", 0, "a.bin")
    out, _ = submit(engine, loaded.tokenizer, "Once upon a time there was", id_slot=0, n_predict=4)
    result = result_of(out)[0]
    assert restore.future.result(timeout=60).n_restored == len(saved)
    assert result.timings.cache_n > 0  # it found the restored tokens in the slot


def test_a_save_copied_in_slices_while_another_slot_generates_is_whole(engine, loaded, monkeypatch):
    """With no time lent to copies (two 1 MB pieces a step), the save's copy spans many steps of slot 0's
    generation; the erase asked right after it waits for the copy, and the file holds slot 1 as it was."""
    monkeypatch.setattr("slotserve.engine.scheduler.BACKGROUND_SHARE", 0.0)
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=8)
    before = tokens_of(engine, 1)
    k_before = engine.slots[1].cache.k[:, :len(before)].copy()
    out, _ = submit(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=64,
                    sampling=ENDLESS)
    save, erase = queue_action(engine, "save", 1, "a.bin"), queue_action(engine, "erase", 1)
    assert isinstance(result_of(out)[0], CompletionResult)
    assert save.future.result(timeout=60).n_saved == len(before)
    assert erase.future.result(timeout=60).n_erased == len(before)
    action(engine, "restore", 0, "a.bin")
    assert tokens_of(engine, 0) == before
    np.testing.assert_array_equal(engine.slots[0].cache.k[:, :len(before)], k_before)


def test_a_restore_while_another_slot_generates_is_whole(engine, loaded, monkeypatch):
    """With no time lent between steps, the restored rows reach the scratch cache in the turns the gate
    gives the writer thread over many steps of slot 0's generation; the slot is swapped in once all are
    there, and a completion asked for it meanwhile starts from the whole restored cache."""
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=8)
    before = tokens_of(engine, 1)
    k_before = engine.slots[1].cache.k[:, :len(before)].copy()
    v_before = engine.slots[1].cache.v[:, :len(before)].copy()
    action(engine, "save", 1, "a.bin")
    action(engine, "erase", 1)
    monkeypatch.setattr("slotserve.engine.scheduler.BACKGROUND_SHARE", 0.0)
    out, _ = submit(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=64,
                    sampling=ENDLESS)
    restore = queue_action(engine, "restore", 1, "a.bin")
    after, _ = submit(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=1)
    assert restore.future.result(timeout=60).n_restored == len(before)
    timings = result_of(after)[0].timings
    assert timings.prompt_n == 1 and timings.cache_n > 0  # its prompt came from the restored cache
    assert isinstance(result_of(out)[0], CompletionResult)
    n = timings.cache_n  # the rows the completion reused, not rewrote
    np.testing.assert_array_equal(engine.slots[1].cache.k[:, :n], k_before[:, :n])
    np.testing.assert_array_equal(engine.slots[1].cache.v[:, :n], v_before[:, :n])


def fails_in_its_copy(engine, monkeypatch, kind, id_slot, filename):
    """The action, with every row copy failing: it is answered with the copy's error."""
    def broken(*args, **kw):
        raise MemoryError("no room for the copy")
    # a save's rows the engine copies (PendingCopies), a restore's the writer thread (into the scratch cache)
    where = ("slotserve.kvcache.parallel.PendingCopies.copy" if kind == "save"
             else "slotserve.kvcache.cache.copy_in_parallel")
    monkeypatch.setattr(where, broken)
    with pytest.raises(EngineError) as err:
        action(engine, kind, id_slot, filename)
    assert err.value.kind == "server" and "no room for the copy" in err.value.message
    monkeypatch.undo()


def test_a_save_whose_copy_fails_is_answered_and_frees_its_slot(engine, loaded, monkeypatch):
    complete(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=4)

    fails_in_its_copy(engine, monkeypatch, "save", 0, "a.bin")
    assert action(engine, "erase", 0).n_erased > 0  # the slot is free, the engine still serves
    for _ in range(3):  # the failed save gave its buffer back: saves beyond the pool's two go through
        assert action(engine, "save", 1, "b.bin").n_saved == 0


def test_a_restore_whose_copy_fails_leaves_the_slot_and_gives_its_read_buffer_back(engine, loaded, monkeypatch):
    complete(engine, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=4)
    saved = tokens_of(engine, 0)
    action(engine, "save", 0, "a.bin")
    complete(engine, loaded.tokenizer, "Lily and Ben went to the park.", id_slot=1, n_predict=4)
    kept = tokens_of(engine, 1)

    fails_in_its_copy(engine, monkeypatch, "restore", 1, "a.bin")
    assert tokens_of(engine, 1) == kept  # the slot is as it was
    assert action(engine, "restore", 1, "a.bin").n_restored == len(saved)  # the read buffer came back
    assert tokens_of(engine, 1) == saved


def test_an_action_whose_future_was_cancelled_is_dropped_and_the_engine_goes_on(engine, loaded):
    """asyncio cancels the future of an awaiting coroutine that is cancelled: nothing is answered then,
    and the engine must not fail answering it."""
    held = HeldSlot(engine, loaded.tokenizer, 0, n_predict=16)
    erase = queue_action(engine, "erase", 0)
    assert erase.future.cancel()
    held.release()
    assert isinstance(result_of(held.out)[0], CompletionResult)
    assert action(engine, "save", 0, "a.bin").n_saved > 16  # never erased, and the engine still serves

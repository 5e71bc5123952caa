"""The engine's contract with the API, on the real stories260K model: phases a request goes through,
the checks submit() makes on the caller's thread, the published snapshot, slot actions and their logs."""
import dataclasses
import queue
import time

import pytest

from engine_helpers import GREEDY, complete, loaded, new_engine, result_of, submit  # noqa: F401 (loaded: a fixture)
from slotserve.engine.slot import Phase
from slotserve.engine.tasks import (CompletionRequest, CompletionResult, CompletionTask, DeleteResult, EngineError,
                                    ErrorKind, PromptProgress, RestoreResult, SaveResult, SlotActionKind,
                                    SlotActionTask, StopReason, TokenOut)
from slotserve.kvcache.persist import ModelIdentity, SlotStore
from slotserve.kvcache.savedir import SaveDir
from slotserve.model.sampling import SamplingParams


@pytest.fixture
def engine(loaded):
    eng = new_engine(loaded, n_parallel=2, n_ctx_slot=128, n_batch=8)
    yield eng
    eng.stop()


def action(engine, kind, id_slot=-1, filename=""):
    task = SlotActionTask(kind, id_slot=id_slot, filename=filename)
    engine.submit(task)
    return task.future.result(timeout=60)


def phases_seen(engine, tokenizer, prompt, id_slot=0, **kw):
    """(item type, the generation's phase when the engine sent it) for everything one request reports."""
    seen = []
    req = CompletionRequest(tokenizer.tokenize(prompt, True, True), GREEDY, id_slot=id_slot, stream=True,
                            return_progress=True, **kw)
    done: queue.Queue = queue.Queue()

    def sink(item):  # runs on the engine thread, so the slot can be read consistently here
        slot = engine.slots[id_slot]
        gen = slot.gen or slot.last
        seen.append((type(item), gen.phase))
        if isinstance(item, (CompletionResult, EngineError)):
            done.put(item)

    engine.submit(CompletionTask(req, sink))
    return done.get(timeout=60), seen


def test_a_request_goes_through_prefill_decode_done(engine, loaded):
    result, seen = phases_seen(engine, loaded.tokenizer, "Lily and Ben went to the park to play with a ball.",
                               n_predict=5)
    assert result.stop_type is StopReason.LIMIT and len(result.tokens) == 5
    progress = [phase for kind, phase in seen if kind is PromptProgress]
    tokens = [phase for kind, phase in seen if kind is TokenOut]
    assert len(progress) > 2 and set(progress) == {Phase.PREFILL}  # the prompt took several chunks of 8
    assert tokens == [Phase.DECODE] * 5
    assert seen[-1] == (CompletionResult, Phase.DONE)
    assert engine.slots[0].gen is None and engine.slots[0].last.phase is Phase.DONE


def test_n_predict_0_ends_in_prefill_without_decoding(engine, loaded):
    result, seen = phases_seen(engine, loaded.tokenizer, "Once upon a time", n_predict=0)
    assert result.tokens == [] and result.stop_type == "limit"
    assert Phase.DECODE not in {phase for _, phase in seen}


@pytest.mark.parametrize("id_slot", [2, 7, -2])
def test_submit_refuses_a_slot_that_does_not_exist(engine, loaded, id_slot):
    with pytest.raises(EngineError) as err:
        submit(engine, loaded.tokenizer, "Hello", id_slot=id_slot)
    assert err.value.kind is ErrorKind.INVALID_REQUEST
    assert err.value.message == f"slot {id_slot} does not exist: this server has 2 slots (ids 0 to 1)"
    with pytest.raises(EngineError, match="does not exist"):
        engine.submit(SlotActionTask(SlotActionKind.ERASE, id_slot=id_slot))


def test_submit_refuses_an_empty_prompt_and_queues_nothing(engine, loaded):
    out: queue.Queue = queue.Queue()
    with pytest.raises(EngineError) as err:
        engine.submit(CompletionTask(CompletionRequest([], GREEDY), out.put))
    assert err.value.kind == "invalid_request" and "empty" in err.value.message
    assert complete(engine, loaded.tokenizer, "Hello", n_predict=2).tokens  # still serving
    assert out.empty()


def test_a_prompt_over_the_context_is_refused_on_submit_unless_it_may_shift(loaded):
    long_prompt = "Once upon a time " * 40  # over 64 tokens
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=64)
    try:
        with pytest.raises(EngineError) as err:
            submit(eng, loaded.tokenizer, long_prompt)
        assert err.value.kind is ErrorKind.EXCEED_CONTEXT_SIZE and err.value.extra["n_ctx"] == 64
    finally:
        eng.stop()
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=64, context_shift=True)
    try:
        assert complete(eng, loaded.tokenizer, long_prompt, n_predict=2).truncated
    finally:
        eng.stop()


def test_kinds_are_str_enums_and_unknown_ones_fail_where_made():
    assert StopReason.EOS == "eos" and f"{StopReason.WORD}" == "word" and str(ErrorKind.NOT_FOUND) == "not_found"
    assert {"exceed_context_size": 1}[ErrorKind.EXCEED_CONTEXT_SIZE] == 1  # api/errors.py looks kinds up so
    assert EngineError("unavailable", "x").kind is ErrorKind.UNAVAILABLE
    with pytest.raises(ValueError):
        EngineError("teapot", "an unknown kind is a bug, not a silent 500")
    assert SlotActionTask("save").action is SlotActionKind.SAVE


def test_the_snapshot_shows_a_finished_request_as_soon_as_its_answer_arrives(engine, loaded):
    before = engine.snapshot
    _, task = submit(engine, loaded.tokenizer, "Once upon a time", id_slot=1, n_predict=6)
    out, _ = submit(engine, loaded.tokenizer, "Tom had a red ball.", id_slot=0, n_predict=4)
    r = result_of(out)[0]
    snap = engine.snapshot  # read right after the answer: published before it was sent
    view = snap.slots[0]
    assert (view.id, view.n_ctx, view.n_past, view.n_decoded) == (0, 128, r.tokens_cached, 4)
    assert view.prompt_n == r.timings.prompt_n and view.request.n_predict == 4
    assert snap.stats.n_predicted_tokens >= 4 and snap.stats.n_prompt_tokens >= r.timings.prompt_n
    # the old snapshot is untouched, and no snapshot can be changed in place
    assert before.slots[0].n_past == 0 and before.stats.n_predicted_tokens == 0 and before.slots[0].request is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.slots[0].n_past = 0


def test_the_snapshot_counts_busy_and_waiting_requests(loaded):
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=2048)
    try:
        endless = SamplingParams(temperature=0, ignore_eos=True)
        out, task = submit(eng, loaded.tokenizer, "Once upon a time", n_predict=-1, stream=True, sampling=endless)
        assert isinstance(out.get(timeout=30), TokenOut)
        waiting_out, _ = submit(eng, loaded.tokenizer, "Hello", n_predict=2)
        for _ in range(3000):  # published after each step: one of the next ones shows both
            snap = eng.snapshot
            if snap.n_waiting == 1:
                break
            time.sleep(0.01)
        assert snap.n_busy == 1 and snap.n_waiting == 1 and snap.slots[0].is_processing
        assert snap.slots[0].id_task == task.id and snap.slots[0].n_decoded >= 1
        task.cancelled.set()
        assert isinstance(result_of(waiting_out)[0], CompletionResult)
        assert eng.snapshot.n_waiting == 0
    finally:
        eng.stop()


def test_slot_actions_return_typed_results_log_one_line_each_and_publish(loaded, tmp_path, caplog):
    hp = loaded.hparams
    store = SlotStore(SaveDir(tmp_path), ModelIdentity(loaded.name, loaded.fingerprint, hp.n_layer, hp.n_embd_kv,
                                                       hp.n_vocab), n_stream=2)
    eng = new_engine(loaded, store, n_parallel=2, n_ctx_slot=128)
    try:
        r = complete(eng, loaded.tokenizer, "Once upon a time", id_slot=0, n_predict=8)
        with caplog.at_level("INFO", logger="slotserve.engine"):
            saved = action(eng, "save", 0, "a.bin")
            restored = action(eng, SlotActionKind.RESTORE, 1, "a.bin")
            assert eng.snapshot.slots[1].n_past == r.tokens_cached  # published before the answer
            with pytest.raises(EngineError) as err:
                action(eng, "restore", 1, "missing.bin")
            erased = action(eng, "erase", 1)
            assert eng.snapshot.slots[1].n_past == 0
            deleted = action(eng, "delete", filename="a.bin")
    finally:
        eng.stop()
    assert isinstance(saved, SaveResult)
    assert (saved.id_slot, saved.filename, saved.n_saved) == (0, "a.bin", r.tokens_cached) and saved.n_written > 0
    assert isinstance(restored, RestoreResult) and (restored.n_restored, restored.n_read) == (r.tokens_cached,
                                                                                              saved.n_written)
    assert err.value.kind == "invalid_request" and "missing.bin" in err.value.message
    assert (erased.id_slot, erased.n_erased) == (1, r.tokens_cached)
    assert deleted == DeleteResult("a.bin") and not (tmp_path / "a.bin").exists()
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "slotserve.engine"]
    assert len(lines) == 5, lines
    assert lines[0].startswith(f"slot 0: saved {r.tokens_cached} tokens to 'a.bin' ({saved.n_written} bytes) in ")
    assert lines[1].startswith(f"slot 1: restored {r.tokens_cached} tokens from 'a.bin'")
    assert lines[2].startswith("slot 1: restore 'missing.bin' refused: slot file 'missing.bin' was not found")
    assert lines[3].startswith(f"slot 1: erased {r.tokens_cached} tokens")
    assert lines[4].startswith("slot file: deleted 'a.bin'")

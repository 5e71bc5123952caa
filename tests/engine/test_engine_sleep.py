"""Sleeping and waking as engine-thread transitions (engine/sleep.py), on the real stories260K model: work
that arrives while the engine is falling asleep waits and is served after the wake, a held server never
sleeps, and a sleeping engine stops cleanly."""
import threading
import time

import pytest

from engine_helpers import GREEDY, complete, loaded, result_of, submit  # noqa: F401 (loaded: a fixture)
from slotserve.engine.draft_model import DraftModel, DraftParams
from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.engine.sleep import IdleSleep, ModelHooks
from slotserve.engine.tasks import CompletionResult
from slotserve.model.forward import Llama

IDLE_S = 0.2
PROMPT = "Once upon a time"


class Hooks:
    """The Service's part, recorded: `drop` can be held up to let work arrive while falling asleep."""

    def __init__(self, loaded):
        self.loaded, self.events = loaded, []
        self.dropping, self.let_drop = threading.Event(), threading.Event()
        self.let_drop.set()

    def drop(self):
        self.events.append("drop")
        self.dropping.set()
        assert self.let_drop.wait(30)

    def load(self):
        self.events.append("load")
        return Llama(self.loaded.hparams, self.loaded.weights)


@pytest.fixture
def sleepy(loaded):
    hooks = Hooks(loaded)
    sleep = IdleSleep(3600, ModelHooks(drop=hooks.drop, load=hooks.load))  # a test sets IDLE_S when ready
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer,
                 EngineConfig(n_parallel=2, n_ctx_slot=256), sleep=sleep)
    eng.start()
    yield eng, sleep, hooks
    hooks.let_drop.set()
    eng.stop()


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_work_arriving_while_falling_asleep_waits_and_is_served_after_the_wake(sleepy, loaded):
    engine, sleep, hooks = sleepy
    before = complete(engine, loaded.tokenizer, PROMPT, n_predict=16)
    hooks.let_drop.clear()
    sleep.idle_seconds = IDLE_S
    assert hooks.dropping.wait(30)  # the engine thread is inside fall_asleep now
    assert sleep.is_sleeping
    waiting = sleep.hold()  # a request on the HTTP side: it must wait for the wake
    assert waiting is not None and not waiting.done()
    out, _ = submit(engine, loaded.tokenizer, PROMPT, n_predict=16)  # and a task straight to the engine
    hooks.let_drop.set()
    waiting.result(timeout=30)
    assert sleep.hold() is None  # awake, and now held by this request
    result, _ = result_of(out)
    sleep.release()
    sleep.release()
    assert isinstance(result, CompletionResult)
    assert result.content == before.content and result.timings.cache_n == 0  # the slots were emptied
    assert hooks.events == ["drop", "load"]  # one sleep, one wake
    assert not sleep.is_sleeping


def test_a_held_server_does_not_sleep(sleepy, loaded):
    engine, sleep, hooks = sleepy
    assert sleep.hold() is None
    sleep.idle_seconds = IDLE_S
    complete(engine, loaded.tokenizer, PROMPT, n_predict=4)
    time.sleep(3 * IDLE_S)
    assert hooks.events == [] and not sleep.is_sleeping
    sleep.release()
    wait_until(lambda: hooks.events == ["drop"])
    assert sleep.is_sleeping


def test_a_sleeping_engine_stops(sleepy):
    engine, sleep, hooks = sleepy
    sleep.idle_seconds = IDLE_S
    wait_until(lambda: hooks.events == ["drop"])
    engine.stop()
    assert not engine._thread.is_alive()
    assert hooks.events == ["drop"]  # stopping does not load the model again


def test_the_draft_model_sleeps_and_wakes_with_the_model(loaded):
    """With -md the draft's weights and caches go too, and drafting goes on after the wake."""
    hooks = Hooks(loaded)
    drafts_loaded = []

    def load_draft():
        drafts_loaded.append(Llama(loaded.hparams, loaded.weights))
        return drafts_loaded[-1]

    sleep = IdleSleep(3600, ModelHooks(drop=hooks.drop, load=hooks.load, load_draft=load_draft))
    config = EngineConfig(n_parallel=2, n_ctx_slot=256, n_draft=4)
    draft = DraftModel(Llama(loaded.hparams, loaded.weights), 2, 256, config.kv_type, DraftParams(n_max=4))
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer, config, sleep=sleep, draft=draft)
    eng.start()
    try:
        before = complete(eng, loaded.tokenizer, PROMPT, n_predict=24, sampling=GREEDY)
        assert before.timings.draft_n > 0
        sleep.idle_seconds = IDLE_S
        wait_until(lambda: sleep.is_freed)
        assert draft.model is None and draft.caches == []  # nothing of the draft is held asleep
        sleep.idle_seconds = 3600
        waiting = sleep.hold()
        waiting.result(timeout=60)
        after = complete(eng, loaded.tokenizer, PROMPT, n_predict=24, sampling=GREEDY)
        assert draft.model is drafts_loaded[0] and len(draft.caches) == 2
        assert after.tokens == before.tokens and after.timings.draft_n > 0
    finally:
        eng.stop()

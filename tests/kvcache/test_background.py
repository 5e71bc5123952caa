"""The gate between the engine's steps and background file work, on real threads."""
import threading
import time

from slotserve.kvcache import background
from slotserve.kvcache.background import Gate


def chunks_on_a_background_thread(gate: Gate, n: int, log: list, started: threading.Event | None = None):
    """A background thread running n chunks through `gate`, each appending its index to `log`."""
    def work():
        background._lower_priority()
        for i in range(n):
            with gate.turn():
                if started is not None:
                    started.set()
                log.append(i)
                time.sleep(0.001)
    pool = background.executor(1, "test-gate")
    return pool, pool.submit(work)


def test_background_chunks_wait_while_a_step_runs_and_go_on_when_it_ends():
    gate, log = Gate(), []
    with gate.shut():
        pool, done = chunks_on_a_background_thread(gate, 3, log)
        time.sleep(0.05)
        assert log == []  # not one chunk while the step runs
    done.result(timeout=10)
    assert log == [0, 1, 2]
    pool.shutdown()


def test_a_lend_runs_chunks_between_steps_and_then_gives_the_turn_back():
    gate, log = Gate(), []
    with gate.shut():  # an engine inside its steps, lending between them
        pool, done = chunks_on_a_background_thread(gate, 1000, log)
        time.sleep(0.02)
        assert log == []
        while not log:  # chunks run during lends (a loaded machine may wake the thread late for one)
            gate.lend(0.02)
        n = len(log)
        time.sleep(0.05)
        assert len(log) in (n, n + 1)  # once lent out, at most the chunk already running ended
    done.result(timeout=30)
    pool.shutdown()


def lend_returns(gate: Gate, seconds: float) -> bool:
    """Whether gate.lend(seconds) returns within a minute (the lends below are of an hour)."""
    lender = threading.Thread(target=gate.lend, args=(seconds,))
    lender.start()
    lender.join(timeout=60)
    return not lender.is_alive()


def test_a_lend_ends_when_no_chunk_wants_a_turn():
    gate, log = Gate(), []
    with gate.shut():
        assert lend_returns(gate, 3600)  # nothing waiting: at once
        pool, done = chunks_on_a_background_thread(gate, 5, log)
        while not gate._waiting:
            time.sleep(0.001)
        while len(log) < 5:  # each lend ends once no next chunk comes (the job ended, or was slow to ask)
            assert lend_returns(gate, 3600)
        assert log == [0, 1, 2, 3, 4]
    done.result(timeout=10)
    pool.shutdown()


def test_the_engines_own_threads_never_wait_at_the_gate():
    """turn() is a background thread's: the engine's copies (or a test's direct call) pass a shut gate."""
    with background.GATE.shut():
        with background.turn():
            pass

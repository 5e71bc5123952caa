"""Slot actions belong to their request (issue 19, D7), over real HTTP: a restore whose client gave up while
it waited for a busy slot is dropped, never run for nobody; one waiting past --slot-action-timeout is
answered 503. The busy slot is a long streamed generation, held open while the action waits."""
import json
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from server import ServerProcess

LONG = {"prompt": "Once upon a time", "n_predict": 1800, "ignore_eos": True, "temperature": 0, "id_slot": 0,
        "stream": True}


@contextmanager
def busy_slot(srv):
    """Slot 0 generating (its first token streamed) until the block ends, which closes the stream."""
    with srv.client.stream("POST", "/completion", json=LONG) as res:
        assert res.status_code == 200
        lines = res.iter_lines()
        assert any(line.startswith("data: ") for line in lines)
        yield


def wait_for_log(srv, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srv._log.flush()
        if text in Path(srv._log.name).read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_a_restore_whose_client_disconnected_is_dropped(stories_path, tmp_path):
    save_dir = tmp_path / "slots"
    with ServerProcess(stories_path, "-c", "4096", "-np", "2", "--temp", "0", "--slot-save-path",
                       str(save_dir)) as srv:
        filled = srv.post("/completion", {"prompt": "Lily and Ben", "id_slot": 1, "n_predict": 4}).json()
        assert srv.post("/slots/1?action=save", {"filename": "other.bin"}).status_code == 200
        with busy_slot(srv):
            with pytest.raises(httpx.TimeoutException):  # the client gives up and closes its connection
                srv.post("/slots/0?action=restore", {"filename": "other.bin"}, timeout=0.5)
            assert wait_for_log(srv, "slot 0: restore 'other.bin' dropped: its client disconnected"), srv.log_tail()
        # once the generation's client has gone too, the slot holds what it generated, not the file
        deadline = time.monotonic() + 60
        while srv.get("/slots").json()[0]["is_processing"] and time.monotonic() < deadline:
            time.sleep(0.05)
        slot = srv.get("/slots").json()[0]
        assert not slot["is_processing"] and slot["n_past"] > filled["tokens_evaluated"] + 4
        assert "restored" not in srv.log_tail(200)


def test_an_action_waiting_past_the_timeout_is_refused(stories_path, tmp_path):
    with ServerProcess(stories_path, "-c", "4096", "-np", "1", "--temp", "0", "--slot-save-path",
                       str(tmp_path / "slots"), "--slot-action-timeout", "0.001") as srv:
        with busy_slot(srv):
            res = srv.post("/slots/0?action=erase")
        assert res.status_code == 503, res.text
        assert "stayed busy" in json.loads(res.text)["error"]["message"]

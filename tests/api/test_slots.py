"""POST /slots/{id}?action=save|restore|erase and the save directory's files, over HTTP.

The main test replays ../shared/golden/slot_scenario_stories260K.json, recorded from llama-server with
the same flags, request by request."""
import json

import pytest
from conftest import shared_file
from server import TINYLLAMA2, ServerProcess


@pytest.fixture()
def srv(stories_path, tmp_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(tmp_path)) as s:
        s.save_dir = tmp_path
        yield s


@pytest.fixture(scope="module")
def shared_srv(stories_path, tmp_path_factory):
    """For tests that leave nothing behind: one server for all of them."""
    save_dir = tmp_path_factory.mktemp("slots")
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as s:
        yield s


def test_golden_scenario(srv):
    scenario = json.loads(shared_file("golden", "slot_scenario_stories260K.json").read_text())
    for i, step in enumerate(scenario["steps"]):
        method, path, body = step["request"]
        res = srv.client.request(method, path, json=body)
        assert res.status_code == step["status"], (i, res.text)
        got = res.json()
        for key, want in step["expect"].items():
            actual = got["timings"][key] if key in ("prompt_n", "cache_n") else got[key]
            assert actual == want, (i, path, key, actual, want)


def test_action_answers(srv):
    srv.post("/completion", {"prompt": "What is the capital of France?", "id_slot": 1})
    saved = srv.post("/slots/1?action=save", {"filename": "france.bin"}).json()
    assert saved["id_slot"] == 1 and saved["filename"] == "france.bin" and saved["n_saved"] == 84
    assert saved["n_written"] == (srv.save_dir / "france.bin").stat().st_size
    assert saved["timings"]["save_ms"] >= 0
    restored = srv.post("/slots/0?action=restore", {"filename": "france.bin"}).json()
    assert restored["n_restored"] == 84 and restored["n_read"] == saved["n_written"]
    assert restored["timings"]["restore_ms"] >= 0
    assert [s["n_past"] for s in srv.get("/slots").json()] == [84, 84]
    assert srv.post("/slots/0?action=erase").json() == {"id_slot": 0, "n_erased": 84}
    assert srv.get("/slots").json()[0]["n_past"] == 0


@pytest.mark.parametrize("path,body,words", [
    ("/slots/0?action=fly", {"filename": "a.bin"}, ["Invalid action", "fly"]),
    ("/slots/0", {"filename": "a.bin"}, ["Invalid action"]),
    ("/slots/x?action=save", {"filename": "a.bin"}, ["Invalid slot ID", "x"]),
    ("/slots/2?action=save", {"filename": "a.bin"}, ["Invalid slot ID", "2 slots"]),
    ("/slots/-1?action=erase", None, ["Invalid slot ID"]),
    ("/slots/0?action=save", {}, ["filename"]),
    ("/slots/0?action=save", None, ["filename"]),
    ("/slots/0?action=save", {"filename": 5}, ["filename", "string"]),
    ("/slots/0?action=save", {"filename": "../evil.bin"}, ["Invalid filename"]),
    ("/slots/0?action=save", {"filename": "a/b.bin"}, ["Invalid filename", "separator"]),
    ("/slots/0?action=save", {"filename": ""}, ["Invalid filename"]),
    ("/slots/0?action=restore", {"filename": "missing.bin"}, ["missing.bin", "not found in the slot save directory"]),
])
def test_action_errors(shared_srv, path, body, words):
    srv = shared_srv
    res = srv.post(path, body)
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["type"] == "invalid_request_error"
    for w in words:
        assert w in err["message"], err["message"]
    assert srv.get("/health").status_code == 200


def test_restore_of_a_damaged_file(srv):
    srv.post("/completion", {"prompt": "Once upon a time", "id_slot": 0, "n_predict": 4})
    srv.post("/slots/0?action=save", {"filename": "good.bin"})
    (srv.save_dir / "junk.bin").write_bytes(b"this is not a slot file")
    res = srv.post("/slots/1?action=restore", {"filename": "junk.bin"})
    assert res.status_code == 400 and res.json()["error"]["type"] == "invalid_request_error"
    data = bytearray((srv.save_dir / "good.bin").read_bytes())
    data[-1] ^= 0xFF
    (srv.save_dir / "good.bin").write_bytes(bytes(data))
    res = srv.post("/slots/1?action=restore", {"filename": "good.bin"})
    assert res.status_code == 400 and "damaged" in res.json()["error"]["message"]
    assert srv.get("/slots").json()[1]["n_past"] == 0  # a refused restore leaves the slot as it was


def test_files_list_and_delete(srv):
    assert srv.get("/slots/files").json() == []
    srv.post("/completion", {"prompt": "Once upon a time", "id_slot": 0, "n_predict": 4})
    srv.post("/slots/0?action=save", {"filename": "one.bin"})
    files = srv.get("/slots/files").json()
    assert [f["filename"] for f in files] == ["one.bin"]
    assert files[0]["n_tokens"] == 8 and files[0]["matches_model"] is True
    assert srv.client.delete("/slots/files/one.bin").json() == {"filename": "one.bin", "deleted": True}
    assert srv.get("/slots/files").json() == []
    res = srv.client.delete("/slots/files/one.bin")
    assert res.status_code == 404 and res.json()["error"]["type"] == "not_found_error"
    res = srv.client.delete("/slots/files/..%2F..%2Fetc%2Fpasswd")
    assert res.status_code == 400 and "Invalid filename" in res.json()["error"]["message"]


def test_without_slot_save_path(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        for path, body in (("/slots/0?action=save", {"filename": "a.bin"}), ("/slots/0?action=erase", None)):
            res = s.post(path, body)
            assert res.status_code == 501 and res.json()["error"]["type"] == "not_supported_error"
        assert s.get("/slots/files").status_code == 501
        assert s.client.delete("/slots/files/a.bin").status_code == 501

"""Slot files over real HTTP: llama-server compatibility, restarts, and every refusal leaving slots and
files exactly as they were. Flags are the golden scenario's: -c 512 -np 2 -b 32 -n 64 --temp 0."""
import json
import os
import resource
import shutil
import signal
import threading
import time

import pytest
from server import TINYLLAMA2, ServerProcess

FRANCE = "What is the capital of France?"
GERMANY = "What is the capital of Germany?"


@pytest.fixture(scope="module")
def scenario_expect(shared):
    """The expected answer of step i of the recorded llama-server slot scenario."""
    steps = json.loads(shared("golden", "slot_scenario_stories260K.json").read_text())["steps"]
    return lambda i: steps[i]["expect"]


@pytest.fixture()
def srv(stories_path, tmp_path):
    save_dir = tmp_path / "slots"
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as s:
        s.save_dir = save_dir
        yield s


def complete(srv, prompt, id_slot):
    res = srv.post("/completion", {"prompt": prompt, "id_slot": id_slot, "cache_prompt": True})
    assert res.status_code == 200, res.text
    return res.json()


def snapshot_files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and not p.is_symlink()}


def test_llama_server_file_restores_and_continues_identically(srv, shared, scenario_expect):
    shutil.copy(shared("golden", "llama-server-slot-france.bin"), srv.save_dir / "france.bin")
    res = srv.post("/slots/0?action=restore", {"filename": "france.bin"})
    assert res.status_code == 200 and res.json()["n_restored"] == 84
    body = complete(srv, GERMANY, 0)
    expect = scenario_expect(4)
    assert body["timings"]["prompt_n"] == expect["prompt_n"] == 6
    assert body["timings"]["cache_n"] == expect["cache_n"]
    assert body["content"] == expect["content"]


def test_a_restored_cache_survives_a_restart(stories_path, tmp_path):
    save_dir = tmp_path / "slots"
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as first:
        before = complete(first, FRANCE, 1)
        assert first.post("/slots/1?action=save", {"filename": "keep.bin"}).json()["n_saved"] == 84
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as second:
        assert second.post("/slots/0?action=restore", {"filename": "keep.bin"}).json()["n_restored"] == 84
        after = complete(second, FRANCE, 0)
    assert after["timings"]["prompt_n"] == 1 and after["timings"]["cache_n"] == 20
    assert after["content"] == before["content"]


def test_a_warmed_prompt_restored_after_a_restart_needs_no_forward(stories_path, tmp_path):
    """n_predict 0 warms a slot with a prompt; saved, and restored by a new server, the same prompt
    takes its first token from the logits kept in the sidecar and answers as evaluating it does."""
    save_dir = tmp_path / "slots"
    ask = {"prompt": FRANCE, "id_slot": 0, "cache_prompt": True, "n_predict": 16, "n_probs": 3}
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as first:
        warm = first.post("/completion", {**ask, "n_predict": 0}).json()
        assert warm["timings"]["prompt_n"] == 21 and warm["content"] == ""
        assert first.post("/slots/0?action=save", {"filename": "warm.bin"}).json()["n_saved"] == 21
        fresh = first.post("/completion", {**ask, "id_slot": 1, "cache_prompt": False}).json()
    with ServerProcess(stories_path, *TINYLLAMA2, "--slot-save-path", str(save_dir)) as second:
        assert second.post("/slots/0?action=restore", {"filename": "warm.bin"}).json()["n_restored"] == 21
        after = second.post("/completion", ask).json()
    assert after["timings"]["prompt_n"] == 0 and after["timings"]["cache_n"] == 21
    assert after["content"] == fresh["content"]
    assert [p["id"] for p in after["completion_probabilities"]] == [p["id"] for p in fresh["completion_probabilities"]]


def foreign_file(save_dir, model_path, name, *flags, prompt="Once upon a time", n_predict=8):
    """A slot file saved by another server (another model, or a bigger context) into save_dir."""
    with ServerProcess(model_path, *flags, "--slot-save-path", str(save_dir)) as other:
        assert other.post("/completion", {"prompt": prompt, "id_slot": 0, "n_predict": n_predict,
                                          "temperature": 0}).status_code == 200
        saved = other.post("/slots/0?action=save", {"filename": name}).json()
    return saved


BAD_RESTORES = ["../france.bin", "a/b.bin", "..", ".", "", " lead.bin", "trail.bin.", "nul\x00.bin", "x" * 256,
                "missing.bin", "truncated.bin", "flipped.bin", "garbage.bin", "synthetic.bin", "too-large.bin",
                "link.bin"]


@pytest.mark.parametrize("name", BAD_RESTORES)
def test_bad_restore_is_a_400_and_changes_nothing(srv, stories_path, shared, name):
    complete(srv, FRANCE, 1)
    good = srv.post("/slots/1?action=save", {"filename": "good.bin"})
    assert good.status_code == 200
    data = (srv.save_dir / "good.bin").read_bytes()
    words = "filename"
    if name == "missing.bin":
        words = "not found"
    elif name == "truncated.bin":
        (srv.save_dir / name).write_bytes(data[:len(data) * 2 // 3])
        words = "truncated"
    elif name == "flipped.bin":
        (srv.save_dir / name).write_bytes(data)
        shutil.copy(srv.save_dir / "good.bin.meta.json", srv.save_dir / "flipped.bin.meta.json")
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        (srv.save_dir / name).write_bytes(bytes(flipped))
        words = "damaged"
    elif name == "garbage.bin":
        (srv.save_dir / name).write_bytes(os.urandom(4096))
        words = "magic"
    elif name == "synthetic.bin":
        foreign_file(srv.save_dir, shared("models", "synth-spm-19M-f16.gguf"), name, "-c", "512", "-np", "2")
        words = "another model"
    elif name == "too-large.bin":
        saved = foreign_file(srv.save_dir, stories_path, name, "-c", "1024", "-np", "1", n_predict=300,
                             prompt="Once upon a time, there was a dog")
        assert saved["n_saved"] > 256
        words = "slot context is 256"
    elif name == "link.bin":
        outside = srv.save_dir.parent / "outside.bin"
        outside.write_bytes(data)
        (srv.save_dir / name).symlink_to(outside)
        words = "symbolic link"
    complete(srv, GERMANY, 0)
    slots_before = srv.get("/slots").json()
    files_before = snapshot_files(srv.save_dir)

    res = srv.post("/slots/0?action=restore", {"filename": name})
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"], error

    assert srv.get("/slots").json() == slots_before
    assert snapshot_files(srv.save_dir) == files_before
    again = complete(srv, GERMANY, 0)  # the slot still holds its cache: only the last token is evaluated
    assert again["timings"]["prompt_n"] == 1


@pytest.mark.parametrize("name", ["../escape.bin", "sub/escape.bin", "link.bin"])
def test_save_can_never_write_outside_the_directory(srv, name):
    victim = srv.save_dir.parent / "escape.bin"
    victim.write_bytes(b"precious")
    (srv.save_dir / "link.bin").symlink_to(victim)
    complete(srv, FRANCE, 0)
    res = srv.post("/slots/0?action=save", {"filename": name})
    assert res.status_code == 400, res.text
    assert victim.read_bytes() == b"precious"
    assert (srv.save_dir / "link.bin").is_symlink()


def limit_file_size():
    # A disk that fills up, for a process that may be root: writes past 200 kB fail with EFBIG
    # (Python ignores SIGXFSZ, so the write raises instead of killing the server).
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_failed_save_keeps_the_previous_file(stories_path, tmp_path):
    save_dir = tmp_path / "slots"
    with ServerProcess(stories_path, "-c", "2048", "-np", "1", "--temp", "0", "--slot-save-path", str(save_dir),
                       preexec_fn=limit_file_size) as s:
        s.post("/completion", {"prompt": FRANCE, "id_slot": 0, "n_predict": 64})
        assert s.post("/slots/0?action=save", {"filename": "keep.bin"}).status_code == 200
        before = snapshot_files(save_dir)
        s.post("/completion", {"prompt": FRANCE, "n_predict": 600, "ignore_eos": True})  # ~400 kB of KV
        res = s.post("/slots/0?action=save", {"filename": "keep.bin"})
        assert res.status_code == 500 and "too large" in res.json()["error"]["message"].lower(), res.text
        assert snapshot_files(save_dir) == {k: v for k, v in before.items() if k == "keep.bin"}
        assert not [p.name for p in save_dir.iterdir() if ".tmp-" in p.name]
        restored = s.post("/slots/0?action=restore", {"filename": "keep.bin"})
        assert restored.status_code == 200 and restored.json()["n_restored"] == 84


def test_server_killed_while_saving_leaves_a_whole_file(stories_path, tmp_path):
    """SIGKILL the server in the middle of a stream of saves: what is on disk is always a complete file."""
    save_dir = tmp_path / "slots"
    with ServerProcess(stories_path, "-c", "2048", "-np", "1", "--temp", "0", "--slot-save-path", str(save_dir)) as s:
        s.post("/completion", {"prompt": "Once upon a time", "n_predict": 600, "ignore_eos": True})
        first = s.post("/slots/0?action=save", {"filename": "big.bin"}).json()
        stop = threading.Event()

        def save_forever():
            while not stop.is_set():
                try:
                    s.post("/slots/0?action=save", {"filename": "big.bin"})
                except Exception:
                    return

        savers = [threading.Thread(target=save_forever) for _ in range(2)]
        for t in savers:
            t.start()
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)
        stop.set()
        for t in savers:
            t.join(timeout=10)
    with ServerProcess(stories_path, "-c", "2048", "-np", "1", "--temp", "0", "--slot-save-path", str(save_dir)) as s:
        res = s.post("/slots/0?action=restore", {"filename": "big.bin"})
        assert res.status_code == 200, res.text
        assert res.json()["n_restored"] == first["n_saved"]
        assert [f["filename"] for f in s.get("/slots/files").json()] == ["big.bin"]
    assert not [p.name for p in save_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(not os.environ.get("LLAMA_SERVER"), reason="set LLAMA_SERVER to a llama-server binary to run")
def test_our_file_restores_in_llama_server(srv, tmp_path, scenario_expect):
    """Optional cross-check with the reference binary (not part of CI, which has none)."""
    complete(srv, FRANCE, 1)
    assert srv.post("/slots/1?action=save", {"filename": "ours.bin"}).json()["n_saved"] == 84
    with ServerProcess(srv.model, *TINYLLAMA2, "--slot-save-path", str(srv.save_dir),
                       binary=os.environ["LLAMA_SERVER"]) as llama:
        res = llama.post("/slots/0?action=restore", {"filename": "ours.bin"})
        assert res.status_code == 200 and res.json()["n_restored"] == 84
        body = llama.post("/completion", {"prompt": GERMANY, "id_slot": 0, "cache_prompt": True}).json()
    expect = scenario_expect(4)
    assert body["timings"]["prompt_n"] == 6 and body["content"] == expect["content"]

"""Two servers sharing one --cache-disk directory (issue 17, replicas without Ray): a prompt one server
spilled to disk is a disk hit on the other while both run, with the answer a fresh greedy evaluation
gives."""
import time

from server import ServerProcess

ARGS = ("-c", "512", "-np", "1", "--temp", "0", "--cache-ram", "0")
# long enough for a disk read to pay (prompt_cache.MIN_DISK_GAIN tokens)
PROMPT = ("Once upon a time there was a little girl who loved to play in the park with her dog. "
          "Every day they ran to the pond, looked at the ducks and came home happy for dinner.")
OTHER = "The big red ball rolled down the hill and the boy ran after it."


def ask(srv: ServerProcess, prompt: str) -> dict:
    res = srv.post("/completion", {"prompt": prompt, "n_predict": 16})
    assert res.status_code == 200, res.text
    return res.json()


def disk_stats(srv: ServerProcess) -> dict:
    return srv.get("/props").json()["slotserve_prompt_cache"]["disk"]


def wait_for_entries(srv: ServerProcess, n: int) -> dict:
    """The server's disk tier once it holds n entries (it lists the shared directory when it changed,
    between steps, so an idle server takes an entry in within a poll or two)."""
    deadline = time.monotonic() + 60
    while (stats := disk_stats(srv))["entries"] < n or stats["pending_bytes"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    return stats


def test_a_prompt_one_server_spilled_is_a_disk_hit_on_the_other(stories_path, tmp_path):
    with ServerProcess(stories_path, *ARGS) as fresh:
        expected = ask(fresh, PROMPT)
    root = tmp_path / "shared"
    with ServerProcess(stories_path, *ARGS, "--cache-disk", root) as a, \
            ServerProcess(stories_path, *ARGS, "--cache-disk", root) as b:
        assert ask(a, PROMPT)["content"] == expected["content"]
        ask(a, OTHER)  # takes a's only slot: PROMPT's state goes to disk (no RAM tier)
        wait_for_entries(a, 1)
        wait_for_entries(b, 1)  # written by a, seen by b without a restart
        got = ask(b, PROMPT)
        stats = disk_stats(b)
    assert got["content"] == expected["content"]
    assert got["timings"]["cache_n"] > 0 and got["timings"]["cache_n"] == expected["timings"]["prompt_n"] - 1
    assert stats["hits"] == 1

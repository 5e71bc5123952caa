"""The prompt-cache tiers over HTTP, on a real server: 8 conversations taking turns on 2 slots reuse
their prefixes from RAM, a restart with --cache-disk finds them on disk, a damaged entry is never
served, and every answer is the one a server without a prompt cache gives (greedy)."""
import json
import shutil

import pytest
from server import ServerProcess

ARGS = ("-c", "4096", "-np", "2", "--temp", "0", "--metrics", "-v")
ANIMALS = "cat dog bird fish frog bear lion mouse".split()
N_TURNS = 3  # the disk tests restart after turn 2


def first_lines() -> list[str]:
    return [f"Story {i}: once upon a time there was a {w}." for i, w in enumerate(ANIMALS)]


def turn(srv: ServerProcess, histories: list[str], t: int) -> list[dict]:
    """One turn of every conversation, round-robin: each history grows by a user line and the answer."""
    out = []
    for i, history in enumerate(histories):
        prompt = history + f"\nUser: tell me more, part {t}.\nBot:"
        res = srv.post("/completion", {"prompt": prompt, "n_predict": 16})
        assert res.status_code == 200, res.text
        body = res.json()
        histories[i] = prompt + body["content"]
        out.append({"content": body["content"], "cache_n": body["timings"]["cache_n"],
                    "prompt_n": body["timings"]["prompt_n"]})
    return out


def cache_metrics(srv: ServerProcess) -> dict:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in srv.get("/metrics").text.splitlines()
            if line.startswith("slotserve:prompt_cache_")}


@pytest.fixture(scope="module")
def reference(stories_path):
    """A server without a prompt cache (--cache-ram 0): its answers, and what it shows of the tiers."""
    with ServerProcess(stories_path, *ARGS, "--cache-ram", "0") as srv:
        histories = first_lines()
        turns = [turn(srv, histories, t) for t in range(N_TURNS)]
        tokenized = [srv.post("/tokenize", {"content": h, "add_special": True}).json()["tokens"] for h in histories]
        seen = {"props": srv.get("/props").json(), "metrics": cache_metrics(srv), "log": srv.log_tail(2000)}
    return turns, tokenized, seen


def assert_reused(turn_now: list[dict], turn_before: list[dict]) -> None:
    """Each conversation started from its own previous state: all of it but the last token or two (the
    answer's first piece may tokenize differently once it follows the prompt's text)."""
    for now, before in zip(turn_now, turn_before):
        assert now["cache_n"] >= before["cache_n"] + before["prompt_n"] - 2, (now, before)


def test_without_a_prompt_cache_the_server_behaves_as_before(reference):
    turns, _, seen = reference
    assert seen["props"]["slotserve_prompt_cache"] is None and seen["metrics"] == {}
    for name in ("prompt cache:", "__TEST_TAG_CACHE_IDLE_SLOT", "updating prompt cache"):
        assert name not in seen["log"]
    assert "--cache-idle-slots requires --cache-ram, disabling" in seen["log"]
    # each turn of a conversation finds only what it shares with the slot's last, other, conversation
    assert all(r["cache_n"] < 10 for t in turns[1:] for r in t)


def test_conversations_taking_turns_reuse_their_prefix_from_ram(stories_path, reference):
    expected = reference[0]
    with ServerProcess(stories_path, *ARGS) as srv:
        assert "__TEST_TAG_CACHE_IDLE_SLOTS_ENABLED__" in srv.log_tail(200)
        histories = first_lines()
        turns = [turn(srv, histories, t) for t in range(N_TURNS)]
        stats = srv.get("/props").json()["slotserve_prompt_cache"]
        metrics = cache_metrics(srv)
        log = srv.log_tail(2000)
    assert [[r["content"] for r in t] for t in turns] == [[r["content"] for r in t] for t in expected]
    for t in range(1, N_TURNS):
        assert_reused(turns[t], turns[t - 1])
    assert "updating prompt cache" in log and "__TEST_TAG_CACHE_IDLE_SLOT__" in log
    n_later = 8 * (N_TURNS - 1)
    assert stats["ram"]["hits"] == n_later and "disk" not in stats
    assert 0 < stats["ram"]["bytes"] <= stats["ram"]["limit_bytes"] == 8192 << 20
    reused = sum(r["cache_n"] for t in turns[1:] for r in t)
    assert stats["ram"]["tokens_reused"] <= reused  # the rest came from the slots themselves
    assert metrics['slotserve:prompt_cache_hits_total{tier="ram"}'] == n_later
    assert metrics['slotserve:prompt_cache_tokens_reused_total{tier="ram"}'] == stats["ram"]["tokens_reused"]
    assert metrics['slotserve:prompt_cache_bytes{tier="ram"}'] == stats["ram"]["bytes"]


@pytest.fixture(scope="module")
def before_restart(stories_path, reference, tmp_path_factory):
    """The first turns on a server with --cache-disk, stopped: its directory, histories and results."""
    root = tmp_path_factory.mktemp("cache-disk")
    with ServerProcess(stories_path, *ARGS, "--cache-disk", str(root)) as srv:
        histories = first_lines()
        turns = [turn(srv, histories, t) for t in range(N_TURNS - 1)]
    assert [[r["content"] for r in t] for t in turns] == [[r["content"] for r in t] for t in reference[0][:-1]]
    assert len(list(root.glob("pc-*.bin"))) >= 8  # the states in RAM and in the slots, written at shutdown
    return root, histories, turns


@pytest.mark.parametrize("cache_ram", ["8192", "0"])
def test_after_a_restart_the_disk_tier_serves_every_conversation(stories_path, reference, before_restart, tmp_path,
                                                                 cache_ram):
    src, histories, turns = before_restart
    root = tmp_path / "disk"
    shutil.copytree(src, root)
    with ServerProcess(stories_path, *ARGS, "--cache-disk", str(root), "--cache-ram", cache_ram) as srv:
        after = turn(srv, list(histories), N_TURNS - 1)  # the first request of each conversation since the restart
        stats = srv.get("/props").json()["slotserve_prompt_cache"]
        metrics = cache_metrics(srv)
    assert [r["content"] for r in after] == [r["content"] for r in reference[0][-1]]
    assert_reused(after, turns[-1])
    assert stats["disk"]["hits"] == 8 and stats["disk"]["limit_bytes"] == 16384 << 20
    assert metrics['slotserve:prompt_cache_hits_total{tier="disk"}'] == 8
    assert stats["ram"]["enabled"] is (cache_ram != "0")


def test_a_damaged_disk_entry_is_skipped_deleted_and_never_served(stories_path, reference, before_restart, tmp_path):
    src, histories, turns = before_restart
    root = tmp_path / "disk"
    shutil.copytree(src, root)
    # the entry conversation 3's next prompt would be served from: the one sharing most of it
    target = reference[1][3]

    def shared(entry):
        tokens = json.loads(entry.with_name(entry.name + ".meta.json").read_text())["tokens"]
        return next((i for i, (a, b) in enumerate(zip(tokens, target)) if a != b), min(len(tokens), len(target)))
    damaged = max(root.glob("pc-*.bin"), key=shared)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the K/V rows: same size, so only the checksum can tell
    damaged.write_bytes(bytes(data))
    with ServerProcess(stories_path, *ARGS, "--cache-disk", str(root)) as srv:
        after = turn(srv, list(histories), N_TURNS - 1)
        stats = srv.get("/props").json()["slotserve_prompt_cache"]
        log = srv.log_tail(2000)
    assert [r["content"] for r in after] == [r["content"] for r in reference[0][-1]]
    assert after[3]["cache_n"] < 10  # evaluated afresh: the damaged rows were not used
    assert_reused(after[:3] + after[4:], turns[-1][:3] + turns[-1][4:])
    assert f"skipping and deleting {damaged.name}" in log
    assert not damaged.exists() and not damaged.with_name(damaged.name + ".meta.json").exists()
    assert stats["disk"]["hits"] == 7

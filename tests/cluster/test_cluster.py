"""`slotserve --ray-replicas 2` on a real local Ray instance: one module-scoped cluster of two stories260K
replicas (4 slots each), shut down at the end. Marked `ray`; without Ray installed they skip, except under
CI, where that is a failure (CI installs the ray extra)."""
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from server import ServerProcess  # noqa: E402

pytestmark = pytest.mark.ray

NP = 4  # slots per replica: the cluster has 2 * NP
GREEDY = {"temperature": 0, "seed": 42}
KEY = "cluster-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def ray_serve():
    if importlib.util.find_spec("ray") is None:  # found, not imported: the servers import it, not pytest
        if os.environ.get("CI") == "true":
            pytest.fail("ray[serve] is not installed: CI installs the ray extra (make install)")
        pytest.skip("ray[serve] is not installed (pip install 'slotserve[ray]')")


@pytest.fixture(scope="module")
def cluster(ray_serve, stories_path, tmp_path_factory):
    slots = tmp_path_factory.mktemp("slots")  # one save directory for both replicas, as a shared mount
    with ServerProcess(stories_path, "-c", str(NP * 2048), "-np", str(NP), "-n", "16", "--metrics",
                       "--slot-save-path", str(slots), "--ray-replicas", "2", "--ray-replica-cpus", "1",
                       "--api-key", KEY, start_timeout=240) as srv:
        srv.client.headers.update(AUTH)
        yield srv


def _wait_until(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def _complete(cluster, **body) -> dict:
    res = cluster.post("/completion", {**GREEDY, **body})
    assert res.status_code == 200, res.text
    return res.json()


def test_completions_and_streams_through_one_address(cluster):
    assert cluster.get("/health").json() == {"status": "ok", "replicas_ready": 2, "replicas": 2}
    whole = _complete(cluster, prompt="Once upon a time", n_predict=12)
    events = cluster.stream("/completion", {**GREEDY, "prompt": "Once upon a time", "n_predict": 12, "stream": True})
    assert "".join(e["content"] for e in events) == whole["content"]
    assert events[-1]["stop"] and 0 <= events[-1]["id_slot"] < 2 * NP
    chat = cluster.post("/v1/chat/completions", {**GREEDY, "max_tokens": 8,
                                                 "messages": [{"role": "user", "content": "Tell me a story"}]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    assert cluster.get("/props").json()["total_slots"] == 2 * NP
    assert cluster.post("/tokenize", {"content": "Once"}).json()["tokens"]


def test_the_front_checks_the_key_and_sends_cors_headers_once(cluster):
    bare = httpx.Client(base_url=cluster.base_url, timeout=30)
    assert bare.get("/health").status_code == 200  # public, as llama-server's
    for path in ("/cluster", "/slots", "/props"):
        assert bare.get(path).status_code == 401, path
    assert bare.post("/completion", json={"prompt": "Hi", "n_predict": 1}).status_code == 401
    res = cluster.post("/completion", {"prompt": "Hi", "n_predict": 1}, headers={"Origin": "http://example.test"})
    assert res.headers.get_list("access-control-allow-origin") == ["http://example.test"]


def test_a_client_leaving_a_stream_frees_its_slot_on_the_replica(cluster):
    body = {**GREEDY, "prompt": "Once upon a time", "n_predict": 1900, "stream": True, "id_slot": NP + 3,
            "ignore_eos": True}
    with httpx.stream("POST", f"{cluster.base_url}/completion", json=body, headers=AUTH, timeout=60) as res:
        for line in res.iter_lines():
            if line.startswith("data: "):
                break  # and the connection closes
    _wait_until(lambda: not cluster.get("/slots").json()[NP + 3]["is_processing"], "the slot to be released", 30)


def test_slots_lists_every_replica_with_cluster_ids(cluster):
    slots = cluster.get("/slots").json()
    assert [s["id"] for s in slots] == list(range(2 * NP))
    # id_slot names a cluster slot: the answer says the same id, and /slots shows that slot holding it
    out = _complete(cluster, prompt="The little dog", n_predict=4, id_slot=NP + 2)
    assert out["id_slot"] == NP + 2
    held = {s["id"]: s["n_past"] for s in cluster.get("/slots").json()}
    assert held[NP + 2] == out["tokens_evaluated"] + out["tokens_predicted"] - 1
    bad = cluster.post("/slots/99?action=erase")
    assert bad.status_code == 400 and f"{2 * NP} slots" in bad.json()["error"]["message"]


def test_a_slot_saved_on_one_replica_restores_on_the_other_and_continues_identically(cluster):
    prompt = "Once upon a time, there was a little bird"
    first = _complete(cluster, prompt=prompt, n_predict=8, id_slot=0)
    saved = cluster.post("/slots/0?action=save", {"filename": "bird.bin"}).json()
    restored = cluster.post(f"/slots/{NP}?action=restore", {"filename": "bird.bin"}).json()  # replica 1
    assert restored["id_slot"] == NP and restored["n_restored"] == saved["n_saved"] > 0
    follow = {"prompt": prompt + first["content"], "n_predict": 12}
    on_replica_1 = _complete(cluster, **follow, id_slot=NP)
    on_replica_0 = _complete(cluster, **follow, id_slot=0)
    assert on_replica_1["timings"]["cache_n"] == on_replica_0["timings"]["cache_n"] >= saved["n_saved"] - 1
    assert on_replica_1["content"] == on_replica_0["content"]


def test_two_replicas_saving_one_name_never_tear_it(cluster):
    _complete(cluster, prompt="A cat sat on the mat", n_predict=8, id_slot=1)
    _complete(cluster, prompt="The sun was hot and the sky was blue", n_predict=8, id_slot=NP + 1)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda slot: cluster.post(f"/slots/{slot}?action=save", {"filename": "both.bin"}),
                                [1, NP + 1] * 6))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    sizes = {a.json()["n_saved"] for a in answers}
    for slot in (2, NP + 3):  # whichever save came last, both replicas read a whole, valid file
        out = cluster.post(f"/slots/{slot}?action=restore", {"filename": "both.bin"})
        assert out.status_code == 200 and out.json()["n_restored"] in sizes, out.text


def test_conversations_taking_turns_reuse_their_prefix_on_their_replica(cluster):
    before = _routing(cluster)
    conversations = [f"Story {i}: Once upon a time, a {animal} lived in a {place}."
                     for i, (animal, place) in enumerate(zip(
                         ["cat", "dog", "bird", "fish", "frog", "bear", "duck", "fox"],
                         ["house", "tree", "pond", "park", "town", "cave", "farm", "hole"]))]
    for turn in range(3):
        for i, text in enumerate(conversations):
            out = _complete(cluster, prompt=text, n_predict=8, cache_prompt=True)
            if turn > 0:
                assert out["timings"]["cache_n"] > 0, (turn, i, out["timings"])
            conversations[i] = text + out["content"] + " Then"
    after = _routing(cluster)
    assert after["prefix_hits"] - before["prefix_hits"] >= 16
    assert after["fallbacks"] == before["fallbacks"]
    metrics = cluster.get("/metrics").text
    assert "slotserve:cluster_prefix_hits_total" in metrics and "llamacpp:prompt_tokens_cached_total" in metrics


def _routing(cluster) -> dict:
    return cluster.get("/cluster").json()["routing"]


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_and_the_cluster_serves_again(cluster):
    replicas = {r["rank"]: r for r in cluster.get("/cluster").json()["replicas"]}
    victim = replicas[1]["pid"]
    events, killed = [], threading.Event()
    body = {**GREEDY, "prompt": "Once upon a time", "n_predict": 1900, "stream": True, "id_slot": NP,
            "ignore_eos": True}
    with httpx.stream("POST", f"{cluster.base_url}/completion", json=body, headers=AUTH, timeout=60) as res:
        assert res.status_code == 200
        for line in res.iter_lines():  # a hang would trip the 60 s read timeout
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if not killed.is_set():
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
    assert "error" in events[-1], events[-1]
    assert events[-1]["error"]["code"] == 503 and "retry" in events[-1]["error"]["message"]
    assert not any(e.get("stop") for e in events[:-1])  # it ended early, not by finishing
    # Serve restarts the replica under the same rank; meanwhile /health stays ok with replica 0
    _wait_until(lambda: {r["rank"]: r["pid"] for r in cluster.get("/cluster").json()["replicas"]}.get(1)
                not in (None, victim), "replica 1 restarted")
    assert cluster.get("/health").json()["replicas_ready"] == 2
    out = _complete(cluster, prompt="Once upon a time", n_predict=4, id_slot=NP)
    assert out["id_slot"] == NP and out["content"]

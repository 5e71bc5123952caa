"""--sleep-idle-seconds on a real server: the model and the KV caches are freed (the process's RSS falls by
the caches' size), the read-only endpoints answer while asleep, the next request that needs the model wakes
it and gets the answer it got before, and with --cache-disk the slots' states are found after the wake."""
import time

import pytest
from conftest import shared_file
from server import ServerError, ServerProcess

ARGS = ("-c", "1024", "-np", "1", "--temp", "0", "--sleep-idle-seconds", "1", "--metrics")
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog."


def is_sleeping(srv: ServerProcess) -> bool:
    res = srv.get("/props")
    assert res.status_code == 200
    return res.json()["is_sleeping"]


def wait_for_sleep(srv: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_sleeping(srv):
        assert time.monotonic() < deadline, "the server did not fall asleep:\n" + srv.log_tail()
        time.sleep(0.1)


def rss_bytes(srv: ServerProcess) -> int:
    for line in open(f"/proc/{srv.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def complete(srv: ServerProcess, prompt: str = PROMPT, **kw) -> dict:
    res = srv.post("/completion", {"prompt": prompt, "n_predict": 8, **kw})
    assert res.status_code == 200, res.text
    return res.json()


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *ARGS) as s:
        yield s


def test_sleep_frees_the_weights_and_the_caches_and_the_next_request_reloads():
    """The 19M model, widened to float32 in the process's own memory (--no-weight-cache): 76 MB of weights
    and 4 slots of 2048 tokens (4 layers x 64 K and 64 V floats a token: 17 MB), next to the interpreter's
    80 MB; all of it must leave the RSS while asleep."""
    n_slots, n_ctx_slot, n_layer, n_embd_kv = 4, 2048, 4, 64
    model = shared_file("models", "synth-spm-19M-f16.gguf")
    with ServerProcess(model, "-c", str(n_slots * n_ctx_slot), "-np", str(n_slots), "--temp", "0",
                       "--sleep-idle-seconds", "1", "--no-weight-cache") as srv:
        freed = 4 * srv.get("/models").json()["data"][0]["meta"]["n_params"] + \
            n_slots * n_ctx_slot * 2 * n_layer * n_embd_kv * 4
        awake = complete(srv)
        rss_awake = rss_bytes(srv)
        wait_for_sleep(srv)
        rss_asleep = rss_bytes(srv)
        assert rss_awake - rss_asleep > 0.9 * freed, (rss_awake, rss_asleep, freed)
        again = complete(srv)
        assert not is_sleeping(srv)
        assert rss_bytes(srv) - rss_asleep > 0.9 * freed  # all of it is back
        # the same greedy answer from the reloaded model, evaluated afresh: nothing survived in RAM
        assert again["content"] == awake["content"] and again["timings"]["cache_n"] == 0
        log = srv.log_tail(200)
        assert "entering sleeping state" in log and "exiting sleeping state: loading the model" in log


def test_read_only_endpoints_answer_asleep_and_the_rest_wake_it(srv):
    complete(srv)
    wait_for_sleep(srv)
    metrics = srv.get("/metrics")
    for path in ("/health", "/v1/health", "/models", "/v1/models", "/props", "/metrics"):
        assert srv.get(path).status_code == 200, path
    assert is_sleeping(srv)
    assert "llamacpp:tokens_predicted_total" in metrics.text
    # as llama-server: GET /slots is a task for the model's owner, so it wakes the server
    slots = srv.get("/slots")
    assert slots.status_code == 200 and len(slots.json()) == 1
    assert not is_sleeping(srv)
    wait_for_sleep(srv)
    assert srv.post("/tokenize", {"content": "Hello"}).json()["tokens"]
    assert not is_sleeping(srv)


def test_requests_at_once_wake_it_once_and_are_all_served(srv):
    from concurrent.futures import ThreadPoolExecutor
    wait_for_sleep(srv)
    n_wakes = srv.log_tail(1000).count("exiting sleeping state")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: complete(srv, f"{PROMPT} {i}"), range(4)))
    assert all(a["tokens_predicted"] == 8 for a in answers)
    assert srv.log_tail(1000).count("exiting sleeping state") == n_wakes + 1


def test_with_a_disk_tier_the_slots_states_are_hits_after_waking(stories_path, tmp_path):
    with ServerProcess(stories_path, "-c", "1024", "-np", "2", "--temp", "0", "--sleep-idle-seconds", "1",
                       "--cache-disk", str(tmp_path)) as s:
        first = complete(s, id_slot=0)
        wait_for_sleep(s)
        again = complete(s)
        assert list(tmp_path.glob("pc-*.bin")), "the slot's state was not written before sleeping"
        assert again["timings"]["cache_n"] >= first["timings"]["prompt_n"] - 1 > 0
        assert again["content"] == first["content"]
        # RAM was emptied by the sleep: the hit is the disk tier's
        assert s.get("/props").json()["slotserve_prompt_cache"]["disk"]["hits"] == 1


def test_without_a_disk_tier_nothing_survives_the_sleep(stories_path):
    with ServerProcess(stories_path, "-c", "1024", "-np", "2", "--temp", "0", "--sleep-idle-seconds", "1") as s:
        first = complete(s, id_slot=0)
        wait_for_sleep(s)
        again = complete(s)
        assert again["timings"]["cache_n"] == 0 and again["content"] == first["content"]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_llama_servers_refused_values(stories_path, value):
    srv = ServerProcess(stories_path, "--sleep-idle-seconds", value, start_timeout=20)
    try:
        with pytest.raises(ServerError, match="cannot be 0 or less than -1"):
            srv.start()
    finally:
        srv.close()


def test_a_model_that_cannot_be_reloaded_stops_the_server(stories_path, tmp_path):
    """As llama-server aborts: the requests waiting for the wake would otherwise wait for ever."""
    import httpx
    model = tmp_path / "model.gguf"
    model.write_bytes(stories_path.read_bytes())
    with ServerProcess(model, "--sleep-idle-seconds", "1") as s:
        wait_for_sleep(s)
        model.unlink()
        with pytest.raises(httpx.TransportError):
            s.post("/completion", {"prompt": "Hi", "n_predict": 1})
        assert s.proc.wait(timeout=30) == 1
        assert "failed to reload the model after sleeping" in s.log_tail()

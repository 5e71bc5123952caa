"""POST /completion against a real server: llama.cpp's greedy text, slot-cache accounting, streaming,
probabilities, stop strings, prompt forms, concurrency."""
import json
import math
import threading
import time

import httpx
import pytest
from server import TINYLLAMA2, ServerProcess


@pytest.fixture(scope="module")
def golden(shared):
    return json.loads(shared("golden", "stories260K.json").read_text())["cases"]


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        yield s


def complete(srv, **body):
    res = srv.post("/completion", body)
    assert res.status_code == 200, res.text
    return res.json()


def test_greedy_matches_llama_cpp(srv, golden):
    case = golden[0]
    body = complete(srv, prompt=case["prompt"], n_predict=64, cache_prompt=False)
    assert body["content"] == case["content"]
    assert body["tokens_predicted"] == 64 and body["tokens_evaluated"] == case["prompt_n"]
    assert body["stop"] is True and body["stop_type"] == "limit" and body["stopping_word"] == ""
    assert body["truncated"] is False and body["tokens"] == []  # tokens only with return_tokens
    assert body["prompt"] == "<s> " + case["prompt"]
    assert body["generation_settings"]["n_predict"] == 64
    assert body["timings"]["predicted_n"] == 64


@pytest.mark.parametrize("i", range(1, 6))
def test_greedy_other_prompts(srv, golden, i):
    case = golden[i]
    body = complete(srv, prompt=case["prompt"], n_predict=64, return_tokens=True)
    assert body["tokens"] == case["tokens"]
    assert body["content"] == case["content"]


def test_slot_cache_accounting(stories_path):
    # the scenario of llama.cpp's test_slot_save: Germany shares 16 of its 22 tokens with France + answer
    with ServerProcess(stories_path, *TINYLLAMA2) as srv:
        t = complete(srv, prompt="What is the capital of France?", id_slot=1)["timings"]
        assert (t["prompt_n"], t["cache_n"]) == (21, 0)
        body = complete(srv, prompt="What is the capital of Germany?", id_slot=1)
        assert body["id_slot"] == 1
        assert (body["timings"]["prompt_n"], body["timings"]["cache_n"]) == (6, 16)
        t = complete(srv, prompt="What is the capital of Germany?", id_slot=1)["timings"]
        assert (t["prompt_n"], t["cache_n"]) == (1, 21)
        t = complete(srv, prompt="What is the capital of Germany?", id_slot=1, cache_prompt=False)["timings"]
        assert (t["prompt_n"], t["cache_n"]) == (22, 0)


def test_stream_equals_non_stream(srv):
    body = {"prompt": "Once upon a time", "n_predict": 32}
    plain = complete(srv, **body)
    events = srv.stream("/completion", {**body, "stream": True})
    assert "[DONE]" not in events  # llama-server's native stream ends without it
    partial, final = events[:-1], events[-1]
    assert all(e["stop"] is False and len(e["tokens"]) == 1 for e in partial)
    assert "".join(e["content"] for e in partial) == plain["content"]
    assert final["stop"] is True and final["content"] == ""
    assert final["stop_type"] == "limit" and final["timings"]["predicted_n"] == 32
    assert final["generation_settings"]["n_predict"] == 32 and final["generation_settings"]["seed"] == 42


def test_two_streams_at_once(srv):
    prompts = ["Once upon a time", "The little dog was very happy because"]
    alone = [complete(srv, prompt=p, n_predict=48)["content"] for p in prompts]
    together: list = [None, None]

    def run(i):
        events = srv.stream("/completion", {"prompt": prompts[i], "n_predict": 48, "stream": True})
        together[i] = "".join(e["content"] for e in events if not e["stop"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert together == alone


LOGPROB_TOL = 0.03  # the model's parity tolerance (tests/model/test_forward_golden.py); the API only relays


def test_n_probs_match_llama_cpp(srv, golden):
    case = golden[0]
    body = complete(srv, prompt=case["prompt"], n_predict=8, n_probs=5, cache_prompt=False)
    probs = body["completion_probabilities"]
    assert len(probs) == 8
    for step, want in zip(probs, case["steps"]):
        assert step["id"] == want["id"]
        assert math.isclose(step["logprob"], want["logprob"], abs_tol=LOGPROB_TOL)
        assert [t["id"] for t in step["top_logprobs"]] == [t for t, _ in want["top"]]
        for got, (_, lp) in zip(step["top_logprobs"], want["top"]):
            assert math.isclose(got["logprob"], lp, abs_tol=LOGPROB_TOL)
            assert bytes(got["bytes"]).decode("utf-8", "replace").startswith(got["token"][:1])
    # post_sampling_probs: probabilities after the chain; greedy leaves only the chosen token
    body = complete(srv, prompt=case["prompt"], n_predict=2, n_probs=5, post_sampling_probs=True)
    step = body["completion_probabilities"][0]
    assert step["prob"] == 1.0 and [t["id"] for t in step["top_probs"]] == [case["steps"][0]["id"]]


def test_n_probs_in_stream(srv):
    events = srv.stream("/completion", {"prompt": "Once upon a time", "n_predict": 3, "n_probs": 2,
                                        "stream": True})
    for e in events[:-1]:
        (p,) = e["completion_probabilities"]
        assert p["id"] == e["tokens"][0] and len(p["top_logprobs"]) == 2
    assert "completion_probabilities" not in events[-1]


def test_stop_string(srv, golden):
    case = golden[1]  # ", there was a little girl named Lily. ..."
    body = complete(srv, prompt=case["prompt"], stop=["girl"])
    assert body["content"] == ", there was a little "
    assert body["stop_type"] == "word" and body["stopping_word"] == "girl"
    body = complete(srv, prompt=case["prompt"], stop="Lily")  # a single string is accepted too
    assert body["content"] == ", there was a little girl named "
    events = srv.stream("/completion", {"prompt": case["prompt"], "stop": ["girl"], "stream": True})
    assert "".join(e["content"] for e in events) == ", there was a little "
    assert events[-1]["stopping_word"] == "girl"


def test_prompt_forms(srv):
    text = "Once upon a time"
    tokens = srv.post("/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    want = complete(srv, prompt=text, n_predict=8)["content"]
    assert complete(srv, prompt=tokens, n_predict=8)["content"] == want
    assert complete(srv, prompt={"prompt_string": text}, n_predict=8)["content"] == want
    # mixed: BOS only when the prompt starts with a string, as llama-server
    assert complete(srv, prompt=[tokens[0], *tokens[1:3], "a time"], n_predict=8)["tokens_evaluated"] == 5
    # a list without numbers is several prompts: the answer is a list
    many = srv.post("/completion", {"prompt": [text, tokens], "n_predict": 8}).json()
    assert isinstance(many, list) and [m["content"] for m in many] == [want, want]
    assert [m["index"] for m in many] == [0, 1]


def test_server_n_predict_is_a_default_not_a_cap(srv):
    """As llama-server 11434: -n 64 applies to requests without n_predict; a request may ask for more."""
    body = complete(srv, prompt="Once upon a time", n_predict=80, ignore_eos=True)
    assert body["tokens_predicted"] == 80 and body["generation_settings"]["n_predict"] == 80
    body = complete(srv, prompt="Once upon a time", ignore_eos=True)
    assert body["tokens_predicted"] == 64 and body["generation_settings"]["n_predict"] == 64


def test_client_disconnect_frees_the_slot(stories_path):
    # 2000 tokens would take the engine seconds; a client leaving must stop it long before that,
    # which n_past (the tokens in the slot's cache) shows
    long_run = {"prompt": "Once upon a time", "n_predict": 2000, "ignore_eos": True}
    with ServerProcess(stories_path, "-c", "2048", "-np", "1", "--temp", "0") as srv:
        with httpx.stream("POST", srv.base_url + "/completion", timeout=30, json={**long_run, "stream": True}) as res:
            for i, _ in enumerate(res.iter_lines()):
                if i > 5:
                    break
        slot = wait_idle(srv)
        assert slot["n_past"] < 1000, slot

        # the same for a non-streaming request whose client gives up waiting
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.base_url + "/completion", timeout=0.3, json=long_run)
        slot = wait_idle(srv)
        assert slot["n_past"] < 1900, slot
        # the slot serves the next request at once
        assert complete(srv, prompt="Hello", n_predict=4)["tokens_predicted"] == 4


def wait_idle(srv, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = srv.get("/slots").json()
        if not any(s["is_processing"] for s in slots):
            return slots[0]
        time.sleep(0.02)
    raise AssertionError("slots still busy")


def test_prompt_progress_and_per_token_timings_in_stream(srv):
    """return_progress: a prompt_progress update when the request starts and after each prompt chunk
    (-b 32 here), as llama-server's; timings_per_token: every partial result carries the timings."""
    prompt = "the quick brown fox jumps over the lazy dog " * 8  # about 80 tokens: three chunks
    events = srv.stream("/completion", {"prompt": prompt, "n_predict": 4, "stream": True, "cache_prompt": False,
                                        "return_progress": True, "timings_per_token": True})
    progress = [e["prompt_progress"] for e in events if "prompt_progress" in e]
    total = events[-1]["tokens_evaluated"]
    assert len(progress) == 1 + -(-total // 32)
    assert progress[0] == {"total": total, "cache": 0, "processed": 0, "time_ms": progress[0]["time_ms"]}
    assert [p["processed"] for p in progress[1:]] == [min(total, 32 * i) for i in range(1, len(progress))]
    assert all(p["total"] == total and p["cache"] == 0 for p in progress)
    assert [p["time_ms"] for p in progress] == sorted(p["time_ms"] for p in progress)

    first = next(e["timings"] for e in events if "prompt_progress" in e)
    assert (first["prompt_n"], first["prompt_ms"], first["predicted_n"], first["predicted_ms"]) == (0, 0, 0, 0)
    prompt_ms = 0.0
    for e in events:
        t = e["timings"]  # every event has them
        assert all(v is not None and v >= 0 for v in t.values()), t
        assert t["prompt_ms"] >= prompt_ms
        prompt_ms = t["prompt_ms"]
    assert prompt_ms > 0
    tokens = [e for e in events if not e["stop"] and "prompt_progress" not in e]
    assert [e["timings"]["predicted_n"] for e in tokens] == [1, 2, 3, 4]
    assert "".join(e["content"] for e in tokens) == complete(srv, prompt=prompt, n_predict=4)["content"]


def test_no_progress_unless_asked(srv):
    events = srv.stream("/completion", {"prompt": "Once upon a time", "n_predict": 2, "stream": True,
                                        "timings_per_token": False})
    assert not any("prompt_progress" in e for e in events)
    assert [("timings" in e) for e in events] == [False, False, True]


def test_generation_settings_list_logit_biases_as_llama_server(srv):
    """llama-server 11434's shape: {"bias", "token"} objects, -inf as null, and with ignore_eos one -inf
    bias per end-of-generation token (stories260K: token 2)."""
    body = complete(srv, prompt="Once", n_predict=2, ignore_eos=True, logit_bias=[[15, -1.5], [16, False]])
    assert body["generation_settings"]["logit_bias"] == [{"bias": -1.5, "token": 15}, {"bias": None, "token": 16},
                                                         {"bias": None, "token": 2}]
    body = complete(srv, prompt="Once", n_predict=2)
    assert body["generation_settings"]["logit_bias"] == []


def test_sse_pings_fill_silences_and_change_nothing_else(stories_path, shared):
    """A stream silent for sse_ping_interval seconds gets an SSE comment (":"), which clients skip. The
    19M model needs milliseconds a token, so a 1 ms interval (fractions are allowed here) sees pings: in
    some of the gaps between 48 tokens (with 8 a CI run once saw none, every token having been queued
    before the stream looked again)."""
    model = shared("models", "synth-spm-19M-f16.gguf")
    body = {"prompt": "Once upon a time", "n_predict": 48, "ignore_eos": True, "stream": True, "temperature": 0}
    with ServerProcess(model, "-c", "256", "-np", "1") as srv:
        def raw(**extra):
            with srv.client.stream("POST", "/completion", json={**body, **extra}) as res:
                return res.read().decode()
        pinged, quiet = raw(sse_ping_interval=0.001), raw(sse_ping_interval=-1)
    assert ":\n\n" in pinged and ":\n\n" not in quiet
    assert pinged.replace(":\n\n", "").split("data: ")[1:-1] == quiet.split("data: ")[1:-1]  # the same tokens

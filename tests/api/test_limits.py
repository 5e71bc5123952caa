"""One request must not take the server down (issue 19, D1): a body limit, big prompts refused before they are
tokenized, big bodies handled off the event loop, memory bounded by a small multiple of the body.

No wall-clock asserts: "the server keeps answering" is checked by order (the small requests finish while the
big one is still in flight) and memory by the server's peak RSS (VmHWM)."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server import TINYLLAMA2, ServerProcess, assert_error

MB = 1 << 20


def peak_rss(srv: ServerProcess) -> int:
    """The server's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--max-body-mb", "16") as s:
        yield s


def test_body_past_the_limit_is_refused_by_its_length(srv):
    body = json.dumps({"prompt": "x" * (17 * MB)}).encode()
    res = srv.post("/completion", content=body, headers={"Content-Type": "application/json"})
    assert_error(res, 413, "invalid_request_error", "16 MiB", "--max-body-mb")
    assert srv.get("/health").status_code == 200


def test_chunked_body_cannot_pass_the_limit(srv):
    """No Content-Length: the body is counted as it arrives, and refused once it passes the limit."""
    sent = []

    def chunks():
        yield b'{"prompt": "'
        for _ in range(40):  # 40 MiB offered; the server stops reading after 16
            sent.append(1)
            yield b"a" * MB
        yield b'"}'

    try:
        res = srv.post("/completion", content=chunks(), headers={"Content-Type": "application/json"})
    except httpx.TransportError:
        pass  # the server may close the connection while the client is still sending: also a refusal
    else:
        assert_error(res, 413, "invalid_request_error", "--max-body-mb")
    assert srv.get("/health").status_code == 200
    assert srv.post("/completion", {"prompt": "Hi", "n_predict": 2}).status_code == 200


def test_big_prompt_is_refused_without_tokenizing_it(srv):
    """A 12 MB prompt for a 256-token slot: llama-server's exceed_context_size_error, counted "at least", with the
    server's peak memory growing by less than a few times the body."""
    before = peak_rss(srv)
    body = json.dumps({"prompt": "Once upon a time, there was a little girl. " * (12 * MB // 44)}).encode()
    for path in ("/completion", "/v1/completions"):
        err = assert_error(srv.post(path, content=body, headers={"Content-Type": "application/json"}),
                           400, "exceed_context_size_error", "at least", "exceeds the available context size")
        assert err["n_ctx"] == 256 and err["n_prompt_tokens"] >= 256
    chat = json.dumps({"messages": [{"role": "user", "content": "Hello " * (12 * MB // 6)}]}).encode()
    assert_error(srv.post("/v1/chat/completions", content=chat, headers={"Content-Type": "application/json"}),
                 400, "exceed_context_size_error", "at least")
    assert peak_rss(srv) - before < 6 * len(body)
    assert srv.post("/completion", {"prompt": "Hi", "n_predict": 2}).status_code == 200


def test_prompt_of_token_ids_stops_counting_at_the_context(srv):
    err = assert_error(srv.post("/completion", {"prompt": [1] * 2_000_000}), 400, "exceed_context_size_error",
                       "at least 256 tokens")
    assert err["n_prompt_tokens"] == 256


def test_prompt_just_past_the_bound_gets_the_exact_count(srv):
    """A prompt the cheap bound cannot refuse is tokenized and refused by the engine with its exact size."""
    tokens = srv.post("/tokenize", {"content": "the cat sat " * 100}).json()["tokens"]
    assert len(tokens) > 256
    err = assert_error(srv.post("/completion", {"prompt": "the cat sat " * 100}), 400, "exceed_context_size_error")
    assert "at least" not in err["message"] and err["n_prompt_tokens"] == len(tokens) + 1  # + BOS


def test_server_answers_while_a_big_body_is_tokenized(srv):
    """/tokenize has no context bound: a ~600 KB text takes the pure-Python tokenizer seconds. Meanwhile /health
    and a small completion on other connections answer: the work runs on a worker thread, not the event loop."""
    text = "Once upon a time, there was a little girl named Lily. " * 11_000
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=srv.base_url, timeout=300) as other:
        big = pool.submit(other.post, "/tokenize", json={"content": text})
        # on the event loop, the tokenizing would hold back every answer below until it ended (at most the round
        # that slipped in before the big body arrived could be answered first)
        answered_while_busy = 0
        for _ in range(50):
            health = srv.get("/health")
            small = srv.post("/completion", {"prompt": "Hi", "n_predict": 2})
            assert health.status_code == 200 and small.status_code == 200
            if big.done():
                break
            answered_while_busy += 1
        res = big.result()
    assert res.status_code == 200 and len(res.json()["tokens"]) > 100_000
    assert answered_while_busy >= 3  # several rounds answered before the big one was done


def test_nan_still_named_in_a_big_body(srv):
    body = '{"prompt": "' + "a " * (MB // 2) + '", "logit_bias": [[5, NaN]]}'
    assert_error(srv.post("/completion", content=body.encode(), headers={"Content-Type": "application/json"}),
                 400, "invalid_request_error", "logit_bias[0][1]")


def metric(srv: ServerProcess, name: str) -> float:
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_max_queued_refuses_past_the_bound_with_retry_after(stories_path):
    """One slot, --max-queued 1: a long stream holds the slot, one request waits (requests_deferred 1), the next
    is refused at once with a 503 and Retry-After; the waiting one is served once the slot frees."""
    with ServerProcess(stories_path, "-c", "8192", "-np", "1", "--temp", "0", "--metrics", "--max-queued", "1") as s, \
            ThreadPoolExecutor(1) as pool:
        body = {"prompt": "Once upon a time", "n_predict": 8000, "ignore_eos": True, "stream": True}
        with s.client.stream("POST", "/completion", json=body) as holder:
            assert holder.status_code == 200
            lines = holder.iter_lines()  # kept: a dropped iterator closes the response, and the server cancels
            next(lines)  # generating: the slot is taken
            waiting = pool.submit(s.post, "/completion", {"prompt": "Hi", "n_predict": 2})
            while metric(s, "llamacpp:requests_deferred") < 1:
                assert not waiting.done(), waiting.result().text
            refused = s.post("/completion", {"prompt": "Hello", "n_predict": 2})
            assert_error(refused, 503, "unavailable_error", "--max-queued 1", "busy")
            assert refused.headers["Retry-After"] == "1"
            assert metric(s, "slotserve:requests_rejected_total") == 1
        # the holder's client is gone: its slot frees and the waiting request runs
        assert waiting.result().status_code == 200
        assert metric(s, "llamacpp:requests_deferred") == 0


def test_cors_sends_vary_origin_when_it_reflects(stories_path, srv):
    res = srv.post("/tokenize", json={"content": "hi"}, headers={"Origin": "http://a.example"})
    assert res.headers["Access-Control-Allow-Origin"] == "http://a.example"  # llama-server's default: echo
    assert res.headers["Vary"] == "Origin"
    assert srv.get("/health").headers["Vary"] == "Origin"  # an answer without Origin varies with it too
    listed = "localhost,https://app.example"
    with ServerProcess(stories_path, *TINYLLAMA2, "--cors-origins", listed) as s:
        for origin, allowed in (("https://app.example", True), ("http://127.0.0.1:3000", True),
                                ("https://evil.example", False), ("null", False)):
            res = s.client.options("/completion", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert res.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), origin
            assert res.headers["Vary"] == "Origin"
    with ServerProcess(stories_path, *TINYLLAMA2, "--cors-origins", "https://app.example") as s:
        assert "Vary" not in s.get("/health").headers  # one literal value: sent as it is, whoever asks

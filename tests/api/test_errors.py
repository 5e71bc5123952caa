"""Bad requests get llama-server's error shape and a 4xx naming the problem, and never hurt the server."""
import pytest
from server import TINYLLAMA2, ServerProcess, assert_error


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        yield s


BAD_COMPLETIONS = [
    ({"prompt": "Hi", "n_predict": "x"}, "n_predict"),
    ({"prompt": "Hi", "n_predict": -2}, "n_predict"),
    ({"prompt": "Hi", "n_predict": 1.5}, "n_predict"),
    ({"prompt": "Hi", "id_slot": "a"}, "id_slot"),
    ({"prompt": "Hi", "id_slot": 2}, "2 slots"),
    ({"prompt": "Hi", "id_slot": -5}, "id_slot"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": True}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2, 99999]}, "prompt[2]"),
    ({"prompt": [1, {"a": 1}]}, "prompt[1]"),
    ({"prompt": {"prompt_string": "x", "multimodal_data": ["AAAA"]}}, "multimodal"),
    ({"prompt": "Hi", "stop": 5}, "stop"),
    ({"prompt": "Hi", "stop": ["a", 1]}, "stop"),
    ({"prompt": "Hi", "stream": "yes"}, "stream"),
    ({"prompt": "Hi", "cache_prompt": 1}, "cache_prompt"),
    ({"prompt": "Hi", "temperature": "hot"}, "temperature"),
    ({"prompt": "Hi", "top_k": "many"}, "top_k"),
    ({"prompt": "Hi", "seed": 1.5}, "seed"),
    ({"prompt": "Hi", "repeat_penalty": 0}, "repeat_penalty"),
    ({"prompt": "Hi", "n_probs": "5"}, "n_probs"),
    ({"prompt": "Hi", "mirostat": 2}, "mirostat"),
    ({"prompt": "Hi", "grammar": "root ::= this is (not valid GBNF"}, "grammar"),
    ({"prompt": "Hi", "n_cmpl": 3}, "n_cmpl"),
    ({"prompt": "Hi", "response_fields": "content"}, "response_fields"),
]


@pytest.mark.parametrize("body,word", BAD_COMPLETIONS)
def test_bad_completion_fields(srv, body, word):
    assert_error(srv.post("/completion", body), 400, "invalid_request_error", word)
    assert srv.get("/health").status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b"\"text\"", b"[" * 100000])
def test_malformed_bodies(srv, raw):
    for path in ("/completion", "/v1/completions", "/v1/chat/completions", "/tokenize"):
        res = srv.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert_error(res, 400, "invalid_request_error", "JSON" if raw.strip() else "empty")
    assert srv.get("/health").status_code == 200


@pytest.mark.parametrize("body,word", [
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": [{"content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "image_url"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "sound"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": 3}, "logprobs"),
])
def test_bad_chat_requests(srv, body, word):
    assert_error(srv.post("/v1/chat/completions", body), 400, "invalid_request_error", word)


def test_oai_completion_unsupported_params(srv):
    assert_error(srv.post("/v1/completions", {"prompt": "Hi", "echo": True}), 400, "invalid_request_error", "echo")
    assert_error(srv.post("/v1/completions", {"prompt": "Hi", "best_of": 2}), 400, "invalid_request_error",
                 "best_of")


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_slot(srv, stream):
    # -c 512 -np 2: 256 tokens per slot
    err = assert_error(srv.post("/completion", {"prompt": "hello " * 300, "stream": stream}), 400,
                       "exceed_context_size_error", "context size")
    assert err["n_ctx"] == 256 and err["n_prompt_tokens"] > 256
    assert srv.get("/health").status_code == 200


def test_prompt_that_just_fits(srv):
    tokens = [1] + [410] * 254  # 255 tokens: one left for the first generated token
    body = srv.post("/completion", {"prompt": tokens, "n_predict": 4}).json()
    assert body["truncated"] is True and body["tokens_predicted"] == 1


def test_server_survives_everything_above(srv):
    body = srv.post("/completion", {"prompt": "Once upon a time", "n_predict": 4}).json()
    assert body["tokens_predicted"] == 4
    assert srv.alive


# ---- API keys ----------------------------------------------------------------------------------

KEY = "sk-this-is-the-secret-key"


@pytest.fixture(scope="module")
def secured(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--api-key", KEY) as s:
        yield s


def test_health_is_public(secured):
    assert secured.get("/health").status_code == 200
    assert secured.get("/v1/health").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY + "x"},
                                     {"x-api-key": "wrong"}, {"Authorization": "Basic " + KEY}])
@pytest.mark.parametrize("method,path", [("POST", "/completions"), ("GET", "/props"), ("GET", "/slots"),
                                         ("GET", "/v1/models"), ("POST", "/slots/0?action=erase")])
def test_wrong_or_missing_key(secured, headers, method, path):
    res = secured.client.request(method, path, json={"prompt": "Hi"}, headers=headers)
    assert_error(res, 401, "authentication_error", "Invalid API Key")


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-Api-Key": KEY}])
def test_correct_key(secured, headers):
    res = secured.post("/completions", {"prompt": "I believe the meaning of life is", "n_predict": 4},
                       headers=headers)
    assert res.status_code == 200 and "content" in res.json()


def test_openai_client_with_key(secured):
    from openai import AuthenticationError, OpenAI
    ok = OpenAI(api_key=KEY, base_url=secured.base_url + "/v1")
    assert len(ok.chat.completions.create(model="x", max_tokens=4, messages=[
        {"role": "user", "content": "What is the meaning of life?"}]).choices) == 1
    with pytest.raises(AuthenticationError):
        OpenAI(api_key="nope", base_url=secured.base_url + "/v1").models.list()

"""Each API dialect in-process (httpx.ASGITransport over the real app and stories260K): its answer body,
its stream events, and the errors every dialect shares. The `inproc` fixture is in tests/conftest.py."""
import logging

import pytest

from slotserve.api.dialects import DIALECTS
from slotserve.api.errors import ERROR_TYPES, ApiError
from slotserve.engine import tasks

HI = {"prompt": "Once upon a time", "n_predict": 4}
CHAT = {"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 4}


def data_of(events):
    return [d for _, d in events]


# ---- native ---------------------------------------------------------------------------------------------------

def test_native_body_fields_in_llama_servers_order(inproc):
    body = inproc.post("/completion", HI).json()
    assert list(body) == ["index", "content", "tokens", "id_slot", "stop", "model", "tokens_predicted",
                          "tokens_evaluated", "generation_settings", "prompt", "has_new_line", "truncated",
                          "stop_type", "stopping_word", "tokens_cached", "timings"]
    assert body["tokens_predicted"] == 4 and body["stop_type"] == "limit"
    assert body["generation_settings"]["n_predict"] == 4


def test_native_settings_show_the_resolved_n_predict(inproc):
    # the server's -n 64 is the default the schema applied: the answer shows it, not -1
    for extra in ({}, {"n_predict": -1}, {"n_predict": None}):
        body = inproc.post("/completion", {"prompt": "Hi", **extra, "response_fields": ["generation_settings"]})
        assert body.json()["generation_settings"]["n_predict"] == 64


def test_native_stream_partials_then_a_final(inproc):
    events = data_of(inproc.events("/completion", {**HI, "stream": True, "return_progress": True}))
    progress = [e for e in events if "prompt_progress" in e]
    tokens, final = [e for e in events[:-1] if "prompt_progress" not in e], events[-1]
    assert progress and all(e["tokens"] == [] for e in progress) and events[0] is progress[0]
    assert [e["tokens_predicted"] for e in tokens] == [1, 2, 3, 4] and all(not e["stop"] for e in tokens)
    assert final["stop"] and final["content"] == "" and final["tokens_predicted"] == 4
    assert "[DONE]" not in events


def test_native_response_fields_lift_nested_ones(inproc):
    body = inproc.post("/completion", {**HI, "response_fields": ["content", "generation_settings/n_predict"]})
    assert list(body.json()) == ["content", "generation_settings/n_predict"]


# ---- OpenAI ---------------------------------------------------------------------------------------------------

def test_openai_completions(inproc):
    body = inproc.post("/v1/completions", HI).json()
    assert list(body) == ["choices", "created", "model", "system_fingerprint", "object", "id", "usage", "timings"]
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] == "length"
    events = data_of(inproc.events("/v1/completions", {**HI, "stream": True}))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == body["choices"][0]["text"]


def test_openai_chat(inproc):
    body = inproc.post("/v1/chat/completions", CHAT).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    events = data_of(inproc.events("/v1/chat/completions", {**CHAT, "stream": True,
                                                            "stream_options": {"include_usage": True}}))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and "usage" in events[-2]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == body["choices"][0]["message"]["content"]


def test_chat_input_tokens_count_the_rendered_prompt(inproc):
    n = inproc.post("/v1/chat/completions/input_tokens", CHAT).json()
    prompt = inproc.post("/apply-template", CHAT).json()["prompt"]
    tokens = inproc.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    assert n == {"input_tokens": len(tokens), "object": "response.input_tokens"}


# ---- Anthropic and Responses -----------------------------------------------------------------------------------

def test_anthropic_messages(inproc):
    body = inproc.post("/v1/messages", CHAT).json()
    assert body["type"] == "message" and body["stop_reason"] == "max_tokens"
    events = inproc.events("/v1/messages", {**CHAT, "stream": True})
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(k == d["type"] for k, d in events)
    assert inproc.post("/v1/messages/count_tokens", CHAT).json()["input_tokens"] > 0


def test_responses(inproc):
    body = inproc.post("/v1/responses", {"input": "Once upon a time", "max_output_tokens": 4}).json()
    assert body["object"] == "response" and body["status"] == "completed"
    events = inproc.events("/v1/responses", {"input": "Once upon a time", "max_output_tokens": 4, "stream": True})
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == body["output"][0]["content"][0]["text"]


def test_every_dialect_has_its_parts():
    for d in DIALECTS:
        assert d.PATHS and callable(d.parse) and d.Answer.body and d.Body.model_json_schema()


# ---- what every dialect shares --------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [("/completion", HI), ("/v1/completions", HI),
                                        ("/v1/chat/completions", CHAT), ("/v1/messages", CHAT)])
@pytest.mark.parametrize("stream", [False, True])
def test_the_engines_refusals_are_http_errors_before_any_stream(inproc, path, body, stream):
    if path != "/v1/messages":  # Anthropic's requests pass no id_slot on (as llama-server's conversion)
        res = inproc.post(path, {**body, "id_slot": 5, "stream": stream})
        assert res.status_code == 400 and "slot 5 does not exist" in res.json()["error"]["message"], res.text
    long = {**body, "prompt": "Once upon a time " * 200} if "prompt" in body else \
        {**body, "messages": [{"role": "user", "content": "Once upon a time " * 200}]}
    err = inproc.post(path, {**long, "stream": stream}).json()["error"]
    assert err["type"] == "exceed_context_size_error" and err["n_ctx"] == 256 and err["n_prompt_tokens"] > 256


def test_nan_and_infinity_literals_are_refused_naming_the_field(inproc):
    for raw, where in [(b'{"prompt": "Hi", "temperature": NaN}', "temperature"),
                       (b'{"prompt": "Hi", "logit_bias": [[5, Infinity]]}', "logit_bias[0][1]"),
                       (b'{"prompt": "Hi", "logit_bias": {"5": -Infinity}}', "logit_bias.5")]:
        res = inproc.post("/completion", content=raw, headers={"content-type": "application/json"})
        assert res.status_code == 400 and f"field '{where}'" in res.json()["error"]["message"], res.text
    # false still bans a token, as in llama-server
    banned = inproc.post("/completion", {**HI, "n_probs": 1, "logit_bias": [[1, False]]}).json()
    assert 1 not in [p["id"] for p in banned["completion_probabilities"]]


def test_a_4xx_answer_is_logged_once(inproc, caplog):
    with caplog.at_level(logging.INFO, logger="slotserve.api"):
        inproc.post("/completion", {"prompt": "Hi", "top_k": "many"})
    lines = [r.getMessage() for r in caplog.records if r.name == "slotserve.api"]
    assert lines == ["POST /completion 400: field 'top_k' must be an integer, not a string"]


def test_every_engine_error_kind_has_an_http_status():
    kinds = getattr(tasks, "ErrorKind", None)
    values = [k.value for k in kinds] if kinds else ["invalid_request", "exceed_context_size", "server",
                                                      "unavailable", "not_found", "not_supported"]
    for kind in values:
        assert ApiError(kind, "x").status == ERROR_TYPES[kind][1]


def test_an_unmapped_kind_is_a_500_that_says_so(caplog):
    with caplog.at_level(logging.ERROR, logger="slotserve.api"):
        err = ApiError("made_up", "boom")
    assert err.status == 500 and "unmapped error kind 'made_up'" in err.message
    assert any("made_up" in r.getMessage() for r in caplog.records)


def test_openapi_describes_the_real_fields(inproc):
    spec = inproc.get("/openapi.json").json()
    schema = spec["paths"]["/completion"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for name in ("prompt", "n_predict", "max_tokens", "n_probs", "id_slot", "temperature", "logit_bias"):
        assert name in schema["properties"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in chat["required"] and "top_logprobs" in chat["properties"]
    assert inproc.get("/docs").status_code == 200


def test_a_refused_prompt_among_several_fails_the_request_and_frees_the_others(inproc):
    # the engine refuses the second prompt (at submit, or when it dispatches it); the first task is cancelled
    res = inproc.post("/completion", {"prompt": ["Once upon a time", "Once upon a time " * 200], "n_predict": 64})
    assert res.status_code == 400 and res.json()["error"]["type"] == "exceed_context_size_error"
    # and the server goes on serving both slots
    both = inproc.post("/completion", {"prompt": ["Hi", "Once"], "n_predict": 2}).json()
    assert [b["tokens_predicted"] for b in both] == [2, 2]

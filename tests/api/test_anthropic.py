"""Anthropic's Messages API against a real slotserve process, in llama-server's shapes."""
import json

import pytest
from server import TINYLLAMA2, ServerProcess

ASK = {"model": "test", "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--alias", "tinyllama-2-anthropic") as s:
        yield s


def test_message_shape(srv):
    body = srv.post("/v1/messages", ASK).json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tinyllama-2-anthropic"
    assert body["content"] == [{"type": "text", "text": body["content"][0]["text"]}]
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    usage = body["usage"]
    assert usage["output_tokens"] == 24 and usage["input_tokens"] + usage["cache_read_input_tokens"] > 0
    assert "timings" not in body
    # the same conversation through the chat endpoint gives the same text
    chat = srv.post("/v1/chat/completions", {"messages": ASK["messages"], "max_tokens": 24, "temperature": 0}).json()
    assert body["content"][0]["text"] == chat["choices"][0]["message"]["content"]


def test_system_and_text_blocks_reach_the_prompt(srv):
    plain = srv.post("/v1/messages/count_tokens", ASK).json()["input_tokens"]
    with_system = {**ASK, "system": [{"type": "text", "text": "You are a helpful assistant."}]}
    counted = srv.post("/v1/messages/count_tokens", with_system).json()["input_tokens"]
    assert counted > plain
    chat = {"messages": [{"role": "system", "content": "You are a helpful assistant."}, *ASK["messages"]]}
    assert srv.post("/v1/chat/completions/input_tokens", chat).json() == {"input_tokens": counted,
                                                                          "object": "response.input_tokens"}
    blocks = {**ASK, "messages": [{"role": "user", "content": [{"type": "text", "text": "Say"},
                                                               {"type": "text", "text": " hello"}]}]}
    assert srv.post("/v1/messages", blocks).status_code == 200


def test_stop_sequence_ends_the_turn(srv):
    first = srv.post("/v1/messages", ASK).json()["content"][0]["text"]
    word = first.split()[1]
    body = srv.post("/v1/messages", {**ASK, "stop_sequences": [word]}).json()
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] == word
    assert first.startswith("".join(b["text"] for b in body["content"]))  # the text before the stop word


def test_stream_events(srv):
    plain = srv.post("/v1/messages", ASK).json()["content"][0]["text"]
    res = srv.client.post("/v1/messages", json={**ASK, "stream": True})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in res.text.strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        events.append((kind[len("event: "):], json.loads(data[len("data: "):])))
    kinds = [k for k, _ in events]
    assert all(k == d["type"] for k, d in events)
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert "".join(d["delta"]["text"] for k, d in events if k == "content_block_delta") == plain
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"output_tokens": 24}
    assert "[DONE]" not in res.text


@pytest.mark.parametrize("body,words", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]},
     "not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search_20250305", "name": "web"}]},
     "only client tools"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1", "content": "x"}]}]},
     "answers no tool call"),
    ({"max_tokens": 5}, "'messages' is required"),
])
def test_unsupported_or_bad_requests_are_400(srv, body, words):
    res = srv.post("/v1/messages", body)
    assert res.status_code == 400 and words in res.json()["error"]["message"], res.text

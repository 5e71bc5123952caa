"""The /v1 API through the official `openai` client (chat, completions, responses), and its raw JSON / SSE shapes."""
import json

import pytest
from openai import OpenAI
from server import TINYLLAMA2, ServerProcess

BOOK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, *TINYLLAMA2, "--alias", "llama-test-model") as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return OpenAI(api_key="dummy", base_url=srv.base_url + "/v1")


@pytest.fixture(scope="module")
def golden(shared):
    return json.loads(shared("golden", "stories260K.json").read_text())["cases"]


def test_completions(client, golden):
    case = golden[0]
    res = client.completions.create(model="davinci-002", prompt=case["prompt"], max_tokens=64)
    assert res.system_fingerprint.startswith("b")
    assert res.object == "text_completion" and "cmpl" in res.id
    assert res.choices[0].text == case["content"]
    assert res.choices[0].finish_reason == "length"
    assert (res.usage.prompt_tokens, res.usage.completion_tokens, res.usage.total_tokens) == (21, 64, 85)


def test_completions_stream(client, golden):
    case = golden[1]
    text, finish, ids = "", None, set()
    for chunk in client.completions.create(model="x", prompt=case["prompt"], max_tokens=64, stream=True):
        ids.add(chunk.id)
        choice = chunk.choices[0]
        text += choice.text
        finish = choice.finish_reason or finish
    assert text == case["content"] and finish == "length" and len(ids) == 1


def test_completions_stop_gives_finish_reason_stop(client):
    res = client.completions.create(model="x", prompt="Once upon a time", max_tokens=64, stop=["girl"])
    assert res.choices[0].text == ", there was a little "
    assert res.choices[0].finish_reason == "stop"


def test_completions_logprobs(srv):
    body = srv.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 3, "logprobs": 2}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(step["top_logprobs"]) == 2 for step in content)


def test_chat(client):
    res = client.chat.completions.create(model="gpt-3.5-turbo", messages=BOOK, max_tokens=8)
    assert res.object == "chat.completion" and "cmpl" in res.id
    assert res.model == "llama-test-model"
    assert res.choices[0].message.role == "assistant" and res.choices[0].message.content
    assert res.choices[0].finish_reason == "length"
    # ChatML prompt with BOS: the same count llama.cpp's test_chat_completion expects
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (77, 8)


def test_chat_prompt_tokens_match_llama_cpp(srv):
    for user, n_prompt in (("Hey", 69), ([{"type": "text", "text": "What is"},
                                          {"type": "text", "text": "the best book"}], 79)):
        body = srv.post("/v1/chat/completions", {"max_tokens": 8, "messages": [
            {"role": "system", "content": "Book"}, {"role": "user", "content": user}]}).json()
        assert body["usage"]["prompt_tokens"] == n_prompt


def test_chat_matches_completion_of_rendered_prompt(srv):
    chat = srv.post("/chat/completions", {"messages": BOOK, "max_tokens": 16}).json()
    prompt = srv.post("/apply-template", {"messages": BOOK}).json()["prompt"]
    assert prompt == ("<|im_start|>system\nBook<|im_end|>\n<|im_start|>user\nWhat is the best book<|im_end|>\n"
                      "<|im_start|>assistant\n")
    plain = srv.post("/completion", {"prompt": prompt, "n_predict": 16}).json()
    assert chat["choices"][0]["message"]["content"] == plain["content"]


def test_chat_stream(client, srv):
    plain = client.chat.completions.create(model="x", messages=BOOK, max_tokens=16).choices[0].message.content
    chunks = list(client.chat.completions.create(model="x", messages=BOOK, max_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert len({c.id for c in chunks}) == 1 and all(c.model == "llama-test-model" for c in chunks)


def test_chat_stream_raw_ends_with_done(srv):
    events = srv.stream("/v1/chat/completions", {"messages": BOOK, "max_tokens": 4, "stream": True})
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_chat_logprobs(srv):
    body = srv.post("/v1/chat/completions", {"messages": BOOK, "max_tokens": 3, "logprobs": True,
                                             "top_logprobs": 3}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and all(len(s["top_logprobs"]) == 3 for s in content)
    res = srv.post("/v1/chat/completions", {"messages": BOOK, "top_logprobs": 3})
    assert res.status_code == 400


def test_models_through_client(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["llama-test-model"]


def test_chat_and_completion_streams_report_prompt_progress(srv):
    """llama-server's shapes: in a chat stream a progress update is a role-only delta carrying
    prompt_progress; in a completions stream, an empty text choice carrying it."""
    chat = srv.stream("/v1/chat/completions", {"messages": BOOK, "max_tokens": 2, "stream": True,
                                               "return_progress": True})
    updates = [e for e in chat[:-1] if "prompt_progress" in e]
    assert len(updates) >= 2 and updates[-1]["prompt_progress"]["processed"] == updates[-1]["prompt_progress"]["total"]
    for e in updates:
        assert e["object"] == "chat.completion.chunk"
        assert e["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chat[-1] == "[DONE]"
    text = srv.stream("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 2, "stream": True,
                                          "return_progress": True})
    updates = [e for e in text[:-1] if "prompt_progress" in e]
    assert len(updates) >= 2
    assert all(e["choices"][0]["text"] == "" and e["choices"][0]["finish_reason"] is None for e in updates)


def test_assistant_prefill_and_continue_final_message(srv):
    """A final assistant message is continued, not closed; vLLM's continue_final_message asks for the
    same explicitly, and together with add_generation_prompt true it is a 400, as in llama-server."""
    prefill = BOOK + [{"role": "assistant", "content": "Whill"}]
    auto = srv.post("/apply-template", {"messages": prefill}).json()["prompt"]
    opened = srv.post("/apply-template", {"messages": BOOK}).json()["prompt"]
    assert auto == opened + "Whill"
    explicit = srv.post("/apply-template", {"messages": prefill, "continue_final_message": True,
                                            "add_generation_prompt": False}).json()["prompt"]
    assert explicit == auto
    both = srv.post("/v1/chat/completions", {"messages": prefill, "continue_final_message": True, "max_tokens": 2})
    assert both.status_code == 400
    assert "Cannot set both add_generation_prompt and continue_final_message" in both.json()["error"]["message"]
    twice = srv.post("/v1/chat/completions", {"messages": prefill + [{"role": "assistant", "content": "x"}]})
    assert twice.status_code == 400


def test_a_prefill_answer_is_the_continuation_only(srv):
    """Deliberately unlike llama-server 11434, whose content starts with the prefill: OpenAI's, vLLM's and
    Anthropic's APIs answer a final assistant message with what comes after it (README: where slotserve
    differs), so SDKs that join the two themselves do not get the prefill twice."""
    prefill = BOOK + [{"role": "assistant", "content": "Whill"}]
    prompt = srv.post("/apply-template", {"messages": prefill}).json()["prompt"]
    chat = srv.post("/v1/chat/completions", {"messages": prefill, "max_tokens": 6, "temperature": 0}).json()
    native = srv.post("/completion", {"prompt": prompt, "n_predict": 6, "temperature": 0}).json()
    assert chat["choices"][0]["message"]["content"] == native["content"]
    assert not native["content"].startswith("Whill")


def test_verbose_server_adds_the_native_answer(stories_path):
    """--verbose: OpenAI-style answers carry "__verbose", the /completion answer, whose prompt is the
    rendered chat template (llama.cpp's tests read it to check templates)."""
    with ServerProcess(stories_path, *TINYLLAMA2, "--verbose") as s:
        body = s.post("/v1/chat/completions", {"messages": BOOK, "max_tokens": 4}).json()
        prompt = s.post("/apply-template", {"messages": BOOK}).json()["prompt"]
        text = s.post("/v1/completions", {"prompt": "Once", "max_tokens": 2}).json()
        chunks = s.stream("/v1/chat/completions", {"messages": BOOK, "max_tokens": 2, "stream": True})
    assert body["__verbose"]["prompt"] == "<s> " + prompt  # the prompt's tokens as text, BOS included, as there
    assert body["__verbose"]["content"] == body["choices"][0]["message"]["content"]
    assert text["__verbose"]["stop"] is True
    assert sum("__verbose" in c for c in chunks[:-1]) == 1 and "__verbose" in chunks[-2]


def test_no_verbose_field_by_default(srv):
    assert "__verbose" not in srv.post("/v1/chat/completions", {"messages": BOOK, "max_tokens": 2}).json()


def test_verbose_per_request(srv):
    """A request's "verbose" overrides the server's --verbose, as llama-server's task parameter does."""
    body = {"messages": BOOK, "max_tokens": 2}
    assert "Book" in srv.post("/v1/chat/completions", {**body, "verbose": True}).json()["__verbose"]["prompt"]
    assert "__verbose" not in srv.post("/v1/chat/completions", {**body, "verbose": False}).json()


def test_templates_get_the_date_as_llama_cpp_gives_it(stories_path, tmp_path):
    import datetime
    template = tmp_path / "t.jinja"
    template.write_text("{{ date_string }}|{{ datetime }}|{{ strftime_now('%Y') }}")
    with ServerProcess(stories_path, "--chat-template-file", str(template)) as s:
        before = datetime.datetime.now()
        prompt = s.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]}).json()["prompt"]
        after = datetime.datetime.now()
    assert prompt in {f"{t:%d %b %Y}|{t:%b %d %Y}|{t:%Y}" for t in (before, after)}  # either side of midnight


# ---- the Responses API ------------------------------------------------------------------------

def chat_text(srv, n):
    answer = srv.post("/v1/chat/completions", {"messages": BOOK, "max_tokens": n}).json()
    return answer["choices"][0]["message"]["content"]


def test_response_object(client, srv):
    res = client.responses.create(model="gpt-4.1", input=BOOK, max_output_tokens=8)
    assert res.id.startswith("resp_") and res.status == "completed" and res.model == "llama-test-model"
    assert res.output[0].id.startswith("msg_") and res.output[0].role == "assistant"
    assert res.output_text == chat_text(srv, 8)  # greedy (--temp 0): the same text as the chat endpoint
    assert res.usage.output_tokens == 8 and res.usage.total_tokens == res.usage.input_tokens + 8


def test_instructions_and_string_input(client, srv):
    res = client.responses.create(model="x", instructions="Book", input="What is the best book", max_output_tokens=8)
    assert res.output_text == chat_text(srv, 8)
    counted = srv.post("/v1/responses/input_tokens", {"instructions": "Book", "input": "What is the best book"})
    assert counted.json() == {"input_tokens": res.usage.input_tokens, "object": "response.input_tokens"}


def test_stream_through_the_sdk(client, srv):
    events = list(client.responses.create(model="x", input=BOOK, max_output_tokens=8, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    msg_id = events[2].item.id
    assert msg_id.startswith("msg_") and all(e.item_id == msg_id for e in events if "text" in e.type)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == done.output_text == chat_text(srv, 8) and done.id == events[0].response.id


def test_stream_with_progress_and_timings(srv):
    res = srv.client.post("/responses", json={"input": "This is a test" * 10, "max_output_tokens": 8, "stream": True,
                                              "timings_per_token": True, "return_progress": True})
    events = [json.loads(block.split("\ndata: ", 1)[1]) for block in res.text.strip().split("\n\n")]
    progress = [e for e in events if "prompt_progress" in e]
    assert progress and all(e["type"] == "response.in_progress" for e in progress)
    assert progress[-1]["prompt_progress"]["processed"] == progress[-1]["prompt_progress"]["total"]
    assert any("timings" in e for e in events if e["type"] == "response.output_text.delta")
    assert "usage" in events[-1]["response"] and "timings" in events[-1]


@pytest.mark.parametrize("body,words", [
    ({"max_output_tokens": 4}, "'input' is required"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": [{"type": "function_call_output", "call_id": "1", "output": "x"}]}, "answers no tool call"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input_file"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "not supported"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 1}}}}, "json_schema"),
])
def test_bad_requests_are_400(srv, body, words):
    res = srv.post("/v1/responses", body)
    assert res.status_code == 400 and words in res.json()["error"]["message"], res.text


def test_templates_treat_missing_names_as_llama_cpp_does(stories_path, tmp_path):
    """llama.cpp's Jinja engine lets a template add a name nobody passed to a string (firefunction-v2 does)."""
    template = tmp_path / "t.jinja"
    template.write_text("{{ 'tools:' + functions }}|{{ x.y }}|{{ 1 in x }}|"
                        "{% for m in messages %}{{ m.content }}{% endfor %}")
    with ServerProcess(stories_path, "--chat-template-file", str(template)) as s:
        prompt = s.post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]}).json()["prompt"]
    assert prompt == "tools:||False|hi"

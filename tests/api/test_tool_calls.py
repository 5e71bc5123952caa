"""OpenAI chat tool calls through the real openai SDK, on stories260K with real templates from llama.cpp's sdist.

stories260K knows nothing of tools: every call it makes here is the grammar's doing, so each must be
well-formed and match its tool's schema."""
import json

import openai
import pytest
from tool_defs import ALARM_TOOL, ASK, SCHEMAS, TEMPLATE_NAMES, TEST_TOOL, TOOLS, WEATHER_TOOL, check_call, server


@pytest.fixture(scope="module", params=TEMPLATE_NAMES, ids=lambda t: t or "chatml")
def srv(request, stories_path):
    with server(stories_path, request.param) as s:
        s.template = request.param
        yield s


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0)


def ask(client, **kw):
    return client.chat.completions.create(model="test", messages=kw.pop("messages", ASK), temperature=0,
                                          **{"max_tokens": 150, **kw})


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, check_call(c.function.name, c.function.arguments)) for c in message.tool_calls or []]


def test_required_makes_a_valid_call(client):
    res = ask(client, tools=TOOLS, tool_choice="required")
    choice = res.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = calls_of(choice.message)
    assert len(calls) == 1  # parallel_tool_calls defaults to false, as in llama-server
    tc = choice.message.tool_calls[0]
    assert tc.type == "function" and tc.id


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t["function"]["name"])
def test_named_function_is_the_one_called(client, tool):
    name = tool["function"]["name"]
    res = ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}})
    assert [n for n, _ in calls_of(res.choices[0].message)] == [name]


def test_none_answers_in_text(client, srv):
    res = ask(client, tools=TOOLS, tool_choice="none", max_tokens=24)
    choice = res.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "length" and choice.message.content


def test_auto_leaves_text_free_and_calls_valid(client, srv):
    res = ask(client, tools=[WEATHER_TOOL, ALARM_TOOL], tool_choice="auto", max_tokens=200)
    choice = res.choices[0]
    calls = calls_of(choice.message)
    if srv.template is None:
        # the generic format answers in JSON throughout: a call or {"response": ...}, read back as content
        assert calls or not choice.message.content.startswith("{")
    else:
        # stories260K never writes a call's opening by itself: its story comes back as it is
        assert calls == [] and choice.finish_reason == "length" and len(choice.message.content) > 20


def test_stream_deltas_add_up_to_the_whole_answer(client):
    whole = ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "set_alarm"}})
    chunks = list(ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "set_alarm"}},
                      stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        delta = chunk.choices[0].delta if chunk.choices else None
        for tc in (delta.tool_calls or []) if delta else []:
            if tc.index not in calls:  # the first delta of a call carries its id, type and name
                assert tc.id and tc.type == "function" and tc.function.name and tc.function.arguments == ""
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None and tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments
    assert len(chunks) > 10  # arguments in pieces, not in one chunk
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == expected
    check_call("set_alarm", calls[0]["arguments"])


def test_parallel_calls(client, srv):
    # with end-of-generation banned the grammar can only go on with another call, until max_tokens
    res = ask(client, tools=[TEST_TOOL, ALARM_TOOL], tool_choice="required", parallel_tool_calls=True,
              max_tokens=400, extra_body={"ignore_eos": True})
    calls = calls_of(res.choices[0].message)
    if srv.template == "meta-llama-Llama-3.3-70B-Instruct":
        assert len(calls) == 1  # its template takes one call per message: the format allows no more
    else:
        assert len(calls) >= 2
    ids = [c.id for c in res.choices[0].message.tool_calls]
    assert len(set(ids)) == len(ids)


def test_round_trip_call_result_answer(client, srv):
    first = ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_current_weather"}})
    message = first.choices[0].message
    (call,) = message.tool_calls
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees"}]
    if srv.template == "mistralai-Mistral-Nemo-Instruct-2407":
        history = history[1:]  # its template wants the system message first only if user/assistant alternate
    final = ask(client, messages=history, tools=TOOLS, max_tokens=60)
    # the answer after the result: text (in the generic format, JSON's "response" read back as text), or a new
    # call, which must then be valid too
    assert final.choices[0].message.content or calls_of(final.choices[0].message)
    # the call and its result are in the prompt the template made
    prompt = srv.post("/apply-template", {"messages": history, "tools": TOOLS}).json()["prompt"]
    assert "Sunny, 22 degrees" in prompt and "get_current_weather" in prompt
    args = json.loads(call.function.arguments)
    assert json.dumps(args["location"])[1:-1] in prompt


def test_malformed_requests_are_400(srv):
    def refused(body) -> str:
        res = srv.post("/v1/chat/completions", {"messages": ASK, "max_tokens": 4, **body})
        assert res.status_code == 400, res.text
        return res.json()["error"]["message"]

    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "minimum": "low"}}}}}
    assert "tools[1].function.parameters" in refused({"tools": [TEST_TOOL, bad_schema]})
    assert "tools[0].function.name" in refused({"tools": [{"type": "function", "function": {"description": "x"}}]})
    assert "tool_choice" in refused({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert "grammar" in refused({"tools": TOOLS, "tool_choice": "required", "grammar": "root ::= \"a\""})
    call = {"id": "abcdefghi", "type": "function", "function": {"name": "test", "arguments": "{\"success\": true}"}}
    history = [ASK[1], {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "zyxwvutsr", "content": "done"}]
    assert "messages[2].tool_call_id" in refused({"messages": history, "tools": TOOLS})
    # the same history answering the call that was made is fine
    history[2]["tool_call_id"] = "abcdefghi"
    assert srv.post("/v1/chat/completions", {"messages": history, "tools": TOOLS, "max_tokens": 4}).status_code == 200


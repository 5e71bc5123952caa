"""Tool use through Anthropic's Messages API (the anthropic SDK), OpenAI's Responses API (the openai SDK) and
LangChain's ChatOpenAI.bind_tools, on stories260K with the Hermes 2 Pro and Mistral Nemo templates from llama.cpp's
sdist (the server samples greedily, --temp 0, as the SDKs may not send a temperature)."""
import anthropic
import openai
import pytest
from tool_defs import ASK, TOOLS, check_call, server

ANTHROPIC_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
                    "input_schema": t["function"]["parameters"]} for t in TOOLS]
RESPONSES_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]
QUESTION = ASK[1]["content"]


@pytest.fixture(scope="module", params=["NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
                                        "mistralai-Mistral-Nemo-Instruct-2407"])
def srv(request, stories_path):
    with server(stories_path, request.param) as s:
        yield s


@pytest.fixture
def claude(srv):
    return anthropic.Anthropic(base_url=srv.base_url, api_key="none", max_retries=0)


@pytest.fixture
def oai(srv):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0)


def ask_claude(claude, **kw):
    return claude.messages.create(model="test", max_tokens=kw.pop("max_tokens", 150),
                                  messages=kw.pop("messages", [{"role": "user", "content": QUESTION}]), **kw)


def test_anthropic_any_and_named_tool_use(claude):
    msg = ask_claude(claude, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert msg.stop_reason == "tool_use" and [b.type for b in msg.content] == ["tool_use"]
    check_call(msg.content[0].name, msg.content[0].input)
    named = ask_claude(claude, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "set_alarm"})
    uses = [b for b in named.content if b.type == "tool_use"]
    assert uses and all(b.name == "set_alarm" for b in uses)
    for b in uses:
        check_call(b.name, b.input)
    text = ask_claude(claude, tools=ANTHROPIC_TOOLS, tool_choice={"type": "none"}, max_tokens=12)
    assert [b.type for b in text.content] == ["text"] and text.stop_reason == "max_tokens"


def test_anthropic_stream_sends_input_json_deltas(claude):
    kw = {"tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "tool", "name": "set_alarm",
                                                    "disable_parallel_tool_use": True}}
    whole = ask_claude(claude, **kw)
    with claude.messages.stream(model="test", max_tokens=150,
                                messages=[{"role": "user", "content": QUESTION}], **kw) as stream:
        events = list(stream)
        final = stream.get_final_message()
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta"
              and e.delta.type == "input_json_delta"]
    assert len(pieces) > 3
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [(b.type, b.name) for b in starts] == [("tool_use", "set_alarm")] and starts[0].id
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in whole.content]
    check_call("set_alarm", "".join(pieces))


def test_anthropic_round_trip(claude, srv):
    first = ask_claude(claude, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "get_current_weather"})
    use = next(b for b in first.content if b.type == "tool_use")
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                             "content": [{"type": "text", "text": "Sunny, 22 degrees"}]}]}]
    final = ask_claude(claude, messages=history, tools=ANTHROPIC_TOOLS, max_tokens=16)
    assert final.content and final.content[0].type == "text"
    # an unknown tool_use_id is refused
    history[2]["content"][0]["tool_use_id"] = "abcdefghi"
    with pytest.raises(anthropic.BadRequestError, match="tool_call_id"):
        ask_claude(claude, messages=history, tools=ANTHROPIC_TOOLS, max_tokens=4)
    with pytest.raises(anthropic.BadRequestError, match="web_search"):
        ask_claude(claude, tools=[{"type": "web_search_20250305", "name": "web_search"}], max_tokens=4)


def test_responses_function_calls(oai):
    res = oai.responses.create(model="test", input=QUESTION, tools=RESPONSES_TOOLS, tool_choice="required",
                               parallel_tool_calls=False, max_output_tokens=150, temperature=0)
    (item,) = res.output
    assert item.type == "function_call" and item.status == "completed" and item.call_id
    check_call(item.name, item.arguments)
    named = oai.responses.create(model="test", input=QUESTION, tools=RESPONSES_TOOLS, max_output_tokens=150,
                                 tool_choice={"type": "function", "name": "test"}, temperature=0)
    assert [(i.type, i.name) for i in named.output] == [("function_call", "test")]
    none = oai.responses.create(model="test", input=QUESTION, tools=RESPONSES_TOOLS, tool_choice="none",
                                max_output_tokens=8, temperature=0)
    assert [i.type for i in none.output] == ["message"]


def test_responses_stream_and_round_trip(oai):
    kw = {"model": "test", "input": QUESTION, "tools": RESPONSES_TOOLS, "max_output_tokens": 150, "temperature": 0,
          "tool_choice": {"type": "function", "name": "set_alarm"}, "parallel_tool_calls": False}
    with oai.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    (item,) = final.output
    assert len(deltas) > 3 and "".join(deltas) == item.arguments
    assert [e.type for e in events][-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                                             "response.completed"]
    check_call("set_alarm", item.arguments)
    history = [{"role": "user", "content": QUESTION},
               {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
               {"type": "function_call_output", "call_id": item.call_id, "output": "Alarm set"}]
    answer = oai.responses.create(model="test", input=history, tools=RESPONSES_TOOLS, tool_choice="none",
                                  max_output_tokens=8, temperature=0)
    assert answer.output_text
    history[2]["call_id"] = "abcdefghi"
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        oai.responses.create(model="test", input=history, tools=RESPONSES_TOOLS, max_output_tokens=4)


def test_langchain_bind_tools(srv):
    """LangChain's ChatOpenAI.bind_tools: the tool call comes back parsed as AIMessage.tool_calls."""
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=srv.base_url + "/v1", api_key="none", model="test", temperature=0,
                                      max_tokens=150, max_retries=0)
    bound = llm.bind_tools(TOOLS, tool_choice="set_alarm")
    msg = bound.invoke(QUESTION)
    assert [c["name"] for c in msg.tool_calls] == ["set_alarm"] and msg.tool_calls[0]["id"]
    check_call("set_alarm", msg.tool_calls[0]["args"])
    merged = None
    for chunk in bound.stream(QUESTION):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(c["name"], c["args"]) for c in msg.tool_calls]

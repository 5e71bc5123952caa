"""The tool-call formats without a server: detection from real templates, the grammars (what they accept and
refuse, through the real matcher and stories260K's vocabulary), and reading calls back whole and streamed."""
import json
from pathlib import Path

import pytest

from slotserve.api.errors import ApiError
from slotserve.api.toolcalls import Choice, plan
from slotserve.api.toolcalls.formats import GENERIC, HERMES, LLAMA3, NEMO, detect
from slotserve.api.toolcalls.history import for_template
from slotserve.constraint import Constraint, ConstraintError, GrammarVocab
from slotserve.model.loader import load_model

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"]}}}
COUNT = {"type": "function", "function": {"name": "count", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]}}}
CALLS = [("get_weather", '{"city": "Paris", "unit": "c"}'), ("count", '{"n": 3}')]


@pytest.fixture(scope="module")
def vocab(stories_path):
    return GrammarVocab.from_tokenizer(load_model(stories_path).tokenizer)


def written(fmt, calls, parallel=True) -> str:
    """Calls as a model writes them in `fmt` (for the generic format, its envelope for `parallel`)."""
    env = GENERIC.single if fmt is GENERIC and not parallel else fmt
    return env.open + env.sep.join(env.call_prefix(n) + a + "}" for n, a in calls) + env.close


def accepts(spec, vocab: GrammarVocab, text: str) -> bool:
    c = Constraint(spec, vocab)
    try:
        for t in vocab.greedy(text.encode()):
            c.accept(t)
    except ConstraintError:
        return False
    return c.is_accepting()


@pytest.mark.parametrize("name,fmt", [("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", HERMES),
                                      ("Qwen-Qwen2.5-7B-Instruct", HERMES),
                                      ("meta-llama-Llama-3.3-70B-Instruct", LLAMA3),
                                      ("mistralai-Mistral-Nemo-Instruct-2407", NEMO)])
def test_format_is_detected_from_the_template(name, fmt):
    assert detect((TEMPLATES / f"{name}.jinja").read_text()) is fmt
    assert detect("{% for m in messages %}{{ m.content }}{% endfor %}") is GENERIC


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, NEMO, GENERIC])
def test_required_grammar_takes_only_valid_calls(fmt, vocab):
    tc = plan([WEATHER, COUNT], "required", True, fmt.marker or "")
    assert tc.fmt is fmt
    spec = tc.constraint()
    assert not spec.lazy
    assert accepts(spec, vocab, written(fmt, CALLS[:1]))
    if fmt.parallel:
        assert accepts(spec, vocab, written(fmt, CALLS))
    assert not accepts(spec, vocab, written(fmt, [("get_weather", '{"city": "Paris", "unit": "k"}')]))  # enum
    assert not accepts(spec, vocab, written(fmt, [("count", '{"n": 12}')]))  # maximum
    assert not accepts(spec, vocab, written(fmt, [("nope", '{}')]))  # not a tool
    assert not accepts(spec, vocab, "Sure, here it is")


def test_named_and_serial_grammars(vocab):
    named = plan([WEATHER, COUNT], {"type": "function", "function": {"name": "count"}}, True, "<tool_call>")
    assert named.req.choice == Choice.NAMED
    assert accepts(named.constraint(), vocab, written(HERMES, CALLS[1:]))
    assert not accepts(named.constraint(), vocab, written(HERMES, CALLS[:1]))
    serial = plan([WEATHER, COUNT], "required", False, "<tool_call>")
    assert not accepts(serial.constraint(), vocab, written(HERMES, CALLS))
    generic = plan([WEATHER, COUNT], "required", False, "")
    assert accepts(generic.constraint(), vocab, written(GENERIC, CALLS[:1], parallel=False))


def test_auto_is_lazy_until_the_call_opens(vocab):
    tc = plan([WEATHER, COUNT], "auto", None, "<tool_call>")
    spec = tc.constraint()
    assert spec.lazy and spec.triggers[0].value == "<tool_call>\n"
    assert accepts(spec, vocab, "Once upon a time " + written(HERMES, CALLS[1:]))
    assert not accepts(spec, vocab, "Once upon a time <tool_call>\n{\"name\": \"count\", \"arguments\": {\"n\": 42}}")
    assert tc.answer("Once upon a time").calls == []
    # Llama 3.x: a call is the whole answer, so the trigger is its opening at the start (after blanks)
    llama = plan([WEATHER, COUNT], "auto", None, LLAMA3.marker).constraint()
    assert accepts(llama, vocab, ' \n{"name": "count", "parameters": {"n": 3}}')
    assert not accepts(llama, vocab, '{"name": "count", "parameters": {"n": 10}}')
    assert accepts(llama, vocab, 'Once upon a time {"name": "count", "parameters": {"n": 10}}')  # not a call
    # the generic format's answer is JSON throughout: a call or a response
    generic = plan([WEATHER], "auto", None, "").constraint()
    assert not generic.lazy
    assert accepts(generic, vocab, '{"response": "Hi \\"you\\""}')
    assert not accepts(generic, vocab, "Hi")
    assert plan([WEATHER], "none", None, "<tool_call>").constraint() is None


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, NEMO, GENERIC])
def test_streamed_pieces_add_up_to_the_answer(fmt):
    tc = plan([WEATHER, COUNT], "required", True, fmt.marker or "")
    calls = CALLS if fmt.parallel else CALLS[:1]
    text = written(fmt, calls)
    whole = tc.answer(text)
    assert [(c.name, c.arguments) for c in whole.calls] == calls and whole.content is None
    stream = tc.stream()
    deltas = [d for ch in text for d in stream.push(ch)] + stream.push("", final=True)
    starts = [d for d in deltas if d.name is not None]
    assert [(d.index, d.name) for d in starts] == [(i, n) for i, (n, _) in enumerate(calls)]
    for i, (_, args) in enumerate(calls):
        assert "".join(d.arguments for d in deltas if d.index == i) == args
    assert not any(d.content for d in deltas) and stream.n_done == len(calls)
    if fmt is NEMO:
        assert all(len(d.id) == 9 and d.id.isalnum() for d in starts)  # the template refuses other ids


def test_text_that_may_open_a_call_waits():
    tc = plan([WEATHER], "auto", None, "<tool_call>")
    stream = tc.stream()
    assert [d.content for d in stream.push("Hi <tool")] == ["Hi "]
    assert [d.content for d in stream.push("box>")] == ["<toolbox>"]
    assert [d.content for d in stream.push(" <")] == [" "]
    assert [d.content for d in stream.push("", final=True)] == ["<"]
    llama = plan([WEATHER], "auto", None, LLAMA3.marker).stream()
    assert llama.push(' {"na') == []
    assert [d.name for d in llama.push('me": "get_weather", "parameters": {')] == ["get_weather", None]
    cut = plan([WEATHER], "auto", None, "<tool_call>").answer('Text <tool_call>\n{"name": "get_weather", "argu')
    assert cut.calls == [] and cut.content == "Text "  # cut short by n_predict: no call


def test_generic_response_streams_as_content():
    tc = plan([WEATHER], "auto", None, "")
    value = 'a "quote", a \\ and \u00e9 \U0001f600 \n end'
    text = json.dumps({"response": value})
    stream = tc.stream()
    got = "".join(d.content for ch in text for d in stream.push(ch)) + "".join(
        d.content for d in stream.push("", final=True))
    assert got == value and tc.answer(text).content == value


@pytest.mark.parametrize("tools,choice,message", [
    ([{"type": "function", "function": {"name": "x y"}}], None, "tools[0].function.name"),
    ([{"type": "retrieval"}], None, "tools[0].type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "nonsense"}}}}}], None, "tools[0].function.parameters' of tool 'f'"),
    ([WEATHER, WEATHER], None, "more than once"),
    ([WEATHER], {"type": "function", "function": {"name": "count"}}, "tool_choice.function.name"),
    ([WEATHER], "sometimes", "tool_choice"),
    (None, "required", "has no tools"),
])
def test_bad_definitions_are_refused_by_name(tools, choice, message):
    with pytest.raises(ApiError) as err:
        plan(tools, choice, None, "<tool_call>")
    assert err.value.status == 400 and message in err.value.message


def test_history_answers_only_calls_that_were_made():
    call = {"id": "abc123def", "type": "function", "function": {"name": "count", "arguments": '{"n": 1}'}}
    messages = [{"role": "user", "content": "count"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "abc123def", "content": "1"}]
    ready = for_template(messages, HERMES, None)
    assert ready[1]["tool_calls"][0]["function"]["arguments"] == {"n": 1} and ready[1]["content"] == ""
    generic = for_template(messages, GENERIC, [COUNT])
    assert generic[0]["role"] == "system" and "count" in generic[0]["content"]
    assert json.loads(generic[2]["content"]) == {"tool_call": {"name": "count", "arguments": {"n": 1},
                                                               "id": "abc123def"}}
    assert json.loads(generic[3]["content"])["tool_response"]["tool"] == "count"
    with pytest.raises(ApiError, match="messages\\[2\\].tool_call_id"):
        for_template([*messages[:2], {**messages[2], "tool_call_id": "zzz"}], HERMES, None)
    with pytest.raises(ApiError, match="arguments' is not valid JSON"):
        bad = {**call, "function": {"name": "count", "arguments": "{n: 1"}}
        for_template([messages[0], {"role": "assistant", "tool_calls": [bad]}], HERMES, None)


def test_schema_refs_resolve_inside_the_call(vocab):
    # pydantic writes nested models as $defs; each tool's schema is its own JSON document in the grammar
    nested = {"type": "function", "function": {"name": "move", "parameters": {
        "type": "object", "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}},
                                              "required": ["x"]}},
        "properties": {"to": {"$ref": "#/$defs/Point"}}, "required": ["to"]}}}
    spec = plan([nested, COUNT], "required", None, "<tool_call>").constraint()
    assert accepts(spec, vocab, written(HERMES, [("move", '{"to": {"x": 4}}')]))
    assert not accepts(spec, vocab, written(HERMES, [("move", '{"to": {"x": "4"}}')]))

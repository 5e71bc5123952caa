"""Structured output over HTTP, on a real server: grammar / json_schema (native and /v1/completions),
response_format (chat), text.format (Responses), lazy grammars, streaming, and the 400s of bad ones."""
import json
import re

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel
from server import ServerProcess

SEEDS = (1, 2, 3)
SCHEMAS = {
    "required fields": {"type": "object", "required": ["name", "age"],
                        "properties": {"name": {"type": "string", "maxLength": 12},
                                       "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
    "enums": {"type": "object", "required": ["color", "size"],
              "properties": {"color": {"enum": ["red", "green", "blue"]},
                             "size": {"type": "string", "enum": ["S", "M", "XL"]}}},
    "bounded integers": {"type": "object", "required": ["n", "m"],
                         "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 300},
                                        "m": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9}}},
    "arrays with min and max items": {
        "type": "object", "required": ["tags"],
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                "minItems": 2, "maxItems": 3}}},
    "nested objects": {
        "type": "object", "required": ["user", "active"],
        "properties": {"user": {"type": "object", "required": ["id", "address"],
                                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                                               "address": {"type": "object", "required": ["zip"],
                                                           "properties": {"zip": {"type": "string",
                                                                                  "pattern": "^[0-9]{5}$"}}}}},
                       "active": {"type": "boolean"}}},
}
CHAT = [{"role": "user", "content": "Tell me about a girl in a park."}]


@pytest.fixture(scope="module")
def srv(stories_path):
    with ServerProcess(stories_path, "-c", "2048", "-np", "2", "--temp", "0.8") as s:
        yield s


def completion(srv, **body):
    res = srv.post("/completion", {"prompt": "Once upon a time", "n_predict": 200, **body})
    assert res.status_code == 200, res.text
    return res.json()


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_answers_sampled_at_0_8_parse_and_validate(srv, name):
    for seed in SEEDS:
        out = completion(srv, json_schema=SCHEMAS[name], seed=seed, temperature=0.8)
        assert out["stop_type"] == "eos", out["content"]
        jsonschema.validate(json.loads(out["content"]), SCHEMAS[name])


def test_every_completion_of_n_cmpl_follows_the_schema(srv):
    schema = SCHEMAS["enums"]
    res = srv.post("/completion", {"prompt": "Once upon a time", "n_predict": 100, "n_cmpl": 2, "seed": 9,
                                   "temperature": 1.0, "json_schema": schema})
    assert res.status_code == 200, res.text
    for out in res.json():
        assert out["stop_type"] == "eos"
        jsonschema.validate(json.loads(out["content"]), schema)


def test_v1_completions_take_json_schema_and_grammar(srv):
    schema = SCHEMAS["enums"]
    res = srv.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 100, "seed": 5,
                                       "json_schema": schema})
    assert res.status_code == 200, res.text
    choice = res.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["text"]), schema)
    res = srv.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 30,
                                       "grammar": 'root ::= ("yes" | "no") "!"'})
    assert res.status_code == 200 and res.json()["choices"][0]["text"] in ("yes!", "no!"), res.text


def test_gbnf_grammar(srv):
    grammar = 'root ::= word ("-" [0-9]{1,3}){1,2}\nword ::= [a-z]{3,6}\n'
    for seed in SEEDS:
        out = completion(srv, grammar=grammar, seed=seed)
        assert out["stop_type"] == "eos" and re.fullmatch(r"[a-z]{3,6}(-[0-9]{1,3}){1,2}", out["content"]), out


def test_a_grammar_that_cannot_finish_within_n_predict_stops_on_the_limit(srv):
    out = completion(srv, json_schema=SCHEMAS["nested objects"], n_predict=6)
    assert out["stop_type"] == "limit" and out["tokens_predicted"] == 6


@pytest.mark.parametrize("body, words", [
    ({"grammar": "root ::= this is (not valid GBNF"}, "grammar"),
    ({"grammar": 'root ::= "a" undefined-rule'}, "not found"),
    ({"json_schema": {"type": "hiccup"}}, "json_schema"),
    ({"json_schema": {"type": "object"}, "grammar": 'root ::= "a"', "response_format": {"type": "sound"}}, None),
    ({"grammar": '%llguidance {}\nstart: "x" <|tool_call|>\n'}, "tool_call"),  # a token this vocabulary lacks
    ({"grammar": 'root ::= "a"', "grammar_lazy": True}, "trigger"),
])
def test_bad_grammars_and_schemas_are_400s_naming_the_problem(srv, body, words):
    for path, extra in (("/completion", {"prompt": "Hi"}), ("/v1/chat/completions", {"messages": CHAT})):
        if "response_format" in body and path == "/completion":
            continue
        for stream in (False, True):  # refused before any stream starts
            res = srv.post(path, {**extra, **body, "stream": stream, "max_tokens": 8})
            assert res.status_code == 400, (path, res.text)
            error = res.json()["error"]
            assert error["type"] == "invalid_request_error"
            if words:
                assert words in error["message"].lower(), error["message"]


def test_chat_response_format_json_object_and_json_schema(srv):
    schema = SCHEMAS["required fields"]
    for fmt in ({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
                {"type": "json_object", "schema": schema}):
        for seed in SEEDS[:2]:
            res = srv.post("/v1/chat/completions", {"messages": CHAT, "response_format": fmt, "seed": seed,
                                                    "max_tokens": 200})
            assert res.status_code == 200, res.text
            choice = res.json()["choices"][0]
            assert choice["finish_reason"] == "stop"
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
    res = srv.post("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"},
                                            "max_tokens": 12})
    assert res.status_code == 200 and res.json()["choices"][0]["message"]["content"].startswith("{"), res.text


class Pet(BaseModel):
    name: str
    legs: int
    happy: bool


def test_openai_sdk_parse_returns_a_parsed_pydantic_object(srv):
    client = OpenAI(api_key="dummy", base_url=srv.base_url + "/v1")
    done = client.chat.completions.parse(model="any", messages=CHAT, response_format=Pet, max_tokens=300, seed=4)
    pet = done.choices[0].message.parsed
    assert isinstance(pet, Pet), done.choices[0].message.content


def test_responses_text_format(srv):
    schema = SCHEMAS["enums"]
    res = srv.post("/v1/responses", {"input": "Tell me a story", "max_output_tokens": 100, "seed": 2,
                                     "text": {"format": {"type": "json_schema", "name": "c", "schema": schema}}})
    assert res.status_code == 200, res.text
    text = res.json()["output"][-1]["content"][0]["text"]
    jsonschema.validate(json.loads(text), schema)


def test_lazy_grammar_with_triggers_passes_through(srv):
    out = completion(srv, prompt="Once upon a time, there", temperature=0, n_predict=60,
                     grammar='root ::= "was a " [a-z]+ "."', grammar_lazy=True,
                     grammar_triggers=[{"type": 2, "value": "was"}])
    assert out["stop_type"] == "eos" and re.fullmatch(r".*?was a [a-z]+\.", out["content"], re.S), out["content"]


def sse_data(res: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in res.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_streaming_under_a_constraint(srv):
    schema = SCHEMAS["arrays with min and max items"]
    body = {"prompt": "Once upon a time", "n_predict": 200, "json_schema": schema, "seed": 3, "stream": True}
    events = sse_data(srv.post("/completion", body))
    text = "".join(e["content"] for e in events)
    assert events[-1]["stop"] and events[-1]["stop_type"] == "eos"
    assert text == completion(srv, **{**body, "stream": False})["content"]
    jsonschema.validate(json.loads(text), schema)
    chat = sse_data(srv.post("/v1/chat/completions", {"messages": CHAT, "stream": True, "seed": 3, "max_tokens": 200,
                                                      "response_format": {"type": "json_schema",
                                                                          "json_schema": {"schema": schema}}}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chat if c.get("choices"))
    jsonschema.validate(json.loads(text), schema)


def test_generation_settings_show_the_grammar_as_llama_server(srv):
    """A grammar is shown as given; a schema as llama.cpp built with llguidance shows it (the grammar that
    runs), lazy grammars with their triggers; without a constraint the fields are empty, as before."""
    gbnf = 'root ::= "yes" | "no"'
    shown = completion(srv, grammar=gbnf, n_predict=4)["generation_settings"]
    assert (shown["grammar"], shown["grammar_lazy"], shown["grammar_triggers"]) == (gbnf, False, [])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    shown = completion(srv, json_schema=schema, n_predict=4)["generation_settings"]
    assert shown["grammar"] == '%llguidance {}\nstart: %json {"properties":{"a":{"type":"integer"}},"type":"object"}'
    assert completion(srv, json_schema={}, n_predict=4)["generation_settings"]["grammar"].endswith(
        '%json {"type":"object"}')
    lazy = completion(srv, grammar=gbnf, grammar_lazy=True, grammar_triggers=[{"type": 1, "value": "yes"}],
                      n_predict=4)["generation_settings"]
    assert (lazy["grammar_lazy"], lazy["grammar_triggers"]) == (True, [{"type": 1, "value": "yes"}])
    plain = completion(srv, n_predict=4)["generation_settings"]
    assert (plain["grammar"], plain["grammar_lazy"], plain["grammar_triggers"]) == ("", False, [])

"""Request fields -> ConstraintSpec, and the errors a client sees for grammars and schemas that do not compile."""
import json

import pytest

from slotserve.constraint import (ConstraintError, Trigger, TriggerType, from_chat, from_fields, from_gbnf,
                                  from_json_schema, from_response_format)
from slotserve.constraint.schema import as_llama_cpp_reads_it


def schema_of(spec) -> dict:
    """The JSON schema a spec carries, without the whitespace setting slotserve adds."""
    (g,) = json.loads(spec.grammar)["grammars"]
    return {k: v for k, v in g["json_schema"].items() if k != "x-guidance"}


def test_gbnf_is_converted_to_lark():
    spec = from_gbnf('root ::= "yes" | "no"\n')
    assert "start:" in spec.grammar and '"yes"' in spec.grammar
    assert spec.source == "grammar" and not spec.lazy


def test_llguidance_prefix_means_lark_as_is():
    text = '%llguidance {}\nstart: "a" b\nb: "b"+\n'
    assert from_gbnf(text).grammar == text


@pytest.mark.parametrize("text, words", [
    ('root ::= [a-z', ["GBNF", "line 1"]),                        # unclosed character class
    ('root ::= "a" | b\n', ["GBNF", "'b'"]),                        # a rule nobody defined
    ('root ::= "a"\nitem ::= "x" (', ["GBNF", "line 2"]),
    ('%llguidance {}\nstart: "a" | foo\n', ["Lark", "foo", "1"]),   # llguidance's own message, line:column
    ('%llguidance {}\nstart: /[a-/\n', ["Lark", "[a-"]),
])
def test_bad_grammars_name_the_problem(text, words):
    with pytest.raises(ConstraintError) as err:
        from_gbnf(text)
    msg = str(err.value)
    assert msg.startswith("grammar:")
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("schema, words", [
    ({"type": "foo"}, ["json_schema", "foo"]),
    ({"type": "integer", "minimum": "x"}, ["json_schema", "minimum"]),
    ({"$ref": "#/definitions/nope"}, ["json_schema", "/definitions/nope"]),
    ({"type": "string", "pattern": "[a-"}, ["json_schema", "unclosed character class"]),
    ({"type": 123}, ["json_schema", "type must be a string"]),  # llama.cpp's own 400 cases
    ({"type": "hiccup"}, ["json_schema", "hiccup"]),
    ([1, 2], ["json_schema", "must be a JSON object"]),
    ("{not json", ["json_schema", "not valid JSON"]),
])
def test_bad_schemas_name_the_problem(schema, words):
    with pytest.raises(ConstraintError) as err:
        from_json_schema(schema)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_empty_schema_means_any_object():
    assert schema_of(from_json_schema({})) == {"type": "object"}


def test_objects_with_properties_are_closed_as_in_llama_cpp():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}},
              "$defs": {"d": {"properties": {"x": {}}}},
              "items": {"properties": {}}, "anyOf": [{"properties": {}}],
              "allOf": [{"properties": {"p": {}}}]}
    closed = as_llama_cpp_reads_it(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["d"]["additionalProperties"] is False
    assert closed["items"]["additionalProperties"] is False and closed["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]  # each allOf part is only a share of the keys
    assert "additionalProperties" not in schema  # the request's own dict is left alone
    # said explicitly, or no properties listed: left open
    assert as_llama_cpp_reads_it({"properties": {}, "additionalProperties": True})["additionalProperties"] is True
    assert "additionalProperties" not in as_llama_cpp_reads_it({"type": "object"})


def test_untyped_schemas_and_item_lists_as_llama_cpp_reads_them():
    read = as_llama_cpp_reads_it
    # llama.cpp's own test: {"items": [{"type": "integer"}]} is a one-integer array
    assert read({"items": [{"type": "integer"}]}) == {
        "type": "array", "prefixItems": [{"type": "integer"}], "items": False, "minItems": 1}
    assert read({"prefixItems": [{}, {}]})["items"] is False
    assert read({"properties": {}})["type"] == "object" and read({"additionalProperties": False})["type"] == "object"
    assert read({"maxLength": 3})["type"] == "string" and read({"items": {}})["type"] == "array"
    for self_typed in ({"const": 1, "maxLength": 3}, {"enum": [1]}, {"$ref": "#/x", "items": {}}, {}):
        assert "type" not in read(self_typed)


def test_boolean_schemas():
    assert schema_of(from_json_schema(True)) == {"type": "object"}
    with pytest.raises(ConstraintError, match="false matches nothing"):
        from_json_schema(False)


def test_response_format_as_llama_server_reads_it():
    assert from_response_format(None) is None and from_response_format({"type": "text"}) is None
    assert schema_of(from_response_format({"type": "json_object"})) == {"type": "object"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    closed = {**schema, "additionalProperties": False}
    assert schema_of(from_response_format({"type": "json_object", "schema": schema})) == closed
    assert schema_of(from_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})) \
        == closed
    with pytest.raises(ConstraintError, match='"text" or "json_object", but got: xml'):
        from_response_format({"type": "xml"})
    with pytest.raises(ConstraintError, match="must be a JSON object"):
        from_response_format({"type": "json_object", "schema": 123})


def test_responses_text_format_is_not_wrapped():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    spec = from_response_format({"type": "json_schema", "name": "x", "schema": schema, "strict": True})
    assert schema_of(spec)["properties"] == schema["properties"]


def test_chat_fields_as_llama_server_reads_them():
    one = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert from_chat({"messages": []}) is None
    assert from_chat({"response_format": {"type": "text"}}) is None
    assert schema_of(from_chat({"response_format": {"type": "json_object"}})) == {"type": "object"}
    # json_object without a schema keeps the request's json_schema; with one, its own wins
    assert schema_of(from_chat({"json_schema": one, "response_format": {"type": "json_object"}}))["properties"]
    assert schema_of(from_chat({"json_schema": one, "response_format": {"type": "json_object", "schema": {}}})) \
        == {"type": "object"}
    assert from_chat({"grammar": 'root ::= "a"'}).source == "grammar"
    with pytest.raises(ConstraintError, match="Cannot use both json_schema and grammar"):
        from_chat({"json_schema": one, "grammar": 'root ::= "a"'})
    with pytest.raises(ConstraintError, match="but got: sound"):
        from_chat({"response_format": {"type": "sound"}})


def test_native_fields():
    assert from_fields({}) is None and from_fields({"grammar": ""}) is None
    assert from_fields({"json_schema": {"type": "integer"}}).source == "json_schema"
    # llama-server: json_schema is used only when no grammar is given
    assert from_fields({"json_schema": {"type": "integer"}, "grammar": 'root ::= "a"'}).source == "grammar"
    lazy = from_fields({"grammar": 'root ::= "<call>" [0-9]', "grammar_lazy": True,
                        "grammar_triggers": [{"type": 1, "value": "<call>"}, {"type": 0, "value": "<x>", "token": 5}]})
    assert lazy.lazy and lazy.triggers == (Trigger(TriggerType.WORD, "<call>"), Trigger(TriggerType.TOKEN, "<x>", 5))


@pytest.mark.parametrize("body, words", [
    ({"grammar": 'root ::= "a"', "grammar_lazy": True}, "no triggers"),
    ({"grammar": 'root ::= "a"', "grammar_lazy": True, "grammar_triggers": [{"type": 7, "value": "x"}]},
     "unknown trigger type"),
    ({"grammar": 'root ::= "a"', "grammar_lazy": True, "grammar_triggers": [{"type": 0, "value": "x"}]},
     "integer 'token'"),
    ({"grammar": 'root ::= "a"', "grammar_triggers": "x"}, "must be an array"),
    ({"grammar": 12}, "non-empty string"),
])
def test_bad_native_fields(body, words):
    with pytest.raises(ConstraintError, match=words):
        from_fields(body)

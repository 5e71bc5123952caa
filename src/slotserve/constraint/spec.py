"""What a request asks to be constrained to, compiled to llguidance's grammar text, checked once.

The API turns its fields into a `ConstraintSpec` (immutable, safe to hand to the engine thread and to
share between the completions of one request); the engine makes one `Constraint` per generation from it.
Field semantics follow llama-server: `json_schema` wins over nothing but an absent `grammar`; an empty
schema means any JSON object; a grammar starting with `%llguidance` is Lark, anything else GBNF.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from .schema import as_llama_cpp_reads_it

# JSON whitespace as llama.cpp's json-schema-to-grammar allows it (its `space` rule): at most one space,
# or one or two newlines and an indent of up to 20. llguidance's default ([ \t\n\r]+, unbounded) lets a
# small model spend its whole n_predict on blank lines inside an object.
JSON_WHITESPACE = r"[ ]?|\n{1,2}[ \t]{0,20}"


class ConstraintError(ValueError):
    """A grammar, schema or trigger that cannot be used; the message names the field and the problem
    (the API answers 400 with it)."""


class TriggerType(IntEnum):
    """llama.cpp's common_grammar_trigger_type; grammar_triggers carry these numbers in `type`."""
    TOKEN = 0
    WORD = 1
    PATTERN = 2
    PATTERN_FULL = 3


@dataclass(frozen=True)
class Trigger:
    type: TriggerType
    value: str  # the word or the regular expression (for TOKEN, the token's text)
    token: int | None = None  # TOKEN only

    @classmethod
    def from_json(cls, obj: Any) -> Trigger:
        """One entry of llama-server's grammar_triggers: {"type": int, "value": str[, "token": int]}."""
        if not isinstance(obj, dict) or not isinstance(obj.get("value"), str):
            raise ConstraintError("grammar_triggers: each trigger must be an object with a string 'value'")
        try:
            kind = TriggerType(obj.get("type"))
        except ValueError:
            raise ConstraintError(f"grammar_triggers: unknown trigger type {obj.get('type')!r} "
                                  f"(0 token, 1 word, 2 pattern, 3 full pattern)") from None
        token = obj.get("token")
        if kind == TriggerType.TOKEN and (not isinstance(token, int) or isinstance(token, bool)):
            raise ConstraintError("grammar_triggers: a token trigger (type 0) needs an integer 'token'")
        return cls(kind, obj["value"], token if kind == TriggerType.TOKEN else None)

    def to_json(self) -> dict:
        """As llama-server shows it in generation_settings.grammar_triggers."""
        out = {"type": int(self.type), "value": self.value}
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass(frozen=True)
class ConstraintSpec:
    """A compiled-to-text constraint: llguidance's grammar (JSON text) plus, when lazy, its triggers."""
    grammar: str  # what LLMatcher takes
    source: str  # "grammar" or "json_schema": the request field errors are reported against
    lazy: bool = False
    triggers: tuple[Trigger, ...] = ()
    text: str = ""  # the grammar as llama-server shows it in generation_settings (the request's, or the schema's)

    def __post_init__(self):
        if self.lazy and not self.triggers:
            raise ConstraintError("grammar_lazy: no triggers set for lazy grammar")


def _check(grammar: str, source: str, what: str) -> str:
    # Validated without the model's tokenizer: special-token names are checked again at matcher creation.
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConstraintError(f"{source}: {what} does not compile: {messages[0].strip()}")
    return grammar


def from_gbnf(text: str, *, lazy: bool = False, triggers: tuple[Trigger, ...] = ()) -> ConstraintSpec:
    """A `grammar` field: GBNF (llama.cpp's grammar format), or Lark when it starts with %llguidance."""
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError("grammar: must be a non-empty string")
    if text.lstrip().startswith("%llguidance"):
        lark, what = text, "the Lark grammar"
    else:
        try:
            lark = gbnf_to_lark(text)
        except Exception as e:  # GbnfToLarkError names the line; an unknown rule is a bare Exception
            raise ConstraintError(f"grammar: failed to parse GBNF: {e}") from None
        what = "the grammar (converted from GBNF to Lark: root is 'start', '-' in names is '_')"
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    return ConstraintSpec(_check(grammar, "grammar", what), "grammar", lazy, triggers, text)


def from_lark(text: str, source: str, *, lazy: bool = False, triggers: tuple[Trigger, ...] = ()) -> ConstraintSpec:
    """A Lark grammar slotserve wrote itself (tool calls); `source` names what errors are reported against."""
    grammar = llguidance.LLMatcher.grammar_from_lark(text)
    return ConstraintSpec(_check(grammar, source, "the grammar"), source, lazy, triggers)


def from_json_schema(schema: Any, *, lazy: bool = False, triggers: tuple[Trigger, ...] = ()) -> ConstraintSpec:
    """A `json_schema` field (or response_format's schema); {} means any JSON object, as in llama-server."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"json_schema: not valid JSON: {e}") from None
    if schema is False:
        raise ConstraintError("json_schema: false matches nothing")
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ConstraintError("json_schema: must be a JSON object")
    if not schema:
        schema = {"type": "object"}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        as_llama_cpp_reads_it(schema), defaults={"whitespace_pattern": JSON_WHITESPACE})
    # shown as llama.cpp built with llguidance shows a schema's grammar (its JSON dump: compact, keys sorted)
    text = "%llguidance {}\nstart: %json " + json.dumps(schema, separators=(",", ":"), sort_keys=True)
    return ConstraintSpec(_check(grammar, "json_schema", "the schema"), "json_schema", lazy, triggers, text)


def _schema_of_format(response_format: Any, schema: Any) -> Any:
    """The schema a response_format asks for, over the request's own `schema` (None: no constraint)."""
    if not isinstance(response_format, dict):
        raise ConstraintError("response_format: must be an object")
    kind = response_format.get("type") or "text"
    if kind == "json_object":
        # llama-server: json_object's own schema wins; without one, a json_schema field stays in force
        return response_format.get("schema", {}) if "schema" in response_format or not schema else schema
    if kind == "json_schema":
        # chat wraps it ({"json_schema": {"schema": ...}}); the Responses API's text.format does not
        wrapper = response_format.get("json_schema")
        return (wrapper if isinstance(wrapper, dict) else response_format).get("schema", {})
    if kind != "text":
        raise ConstraintError(f'response_format type must be one of "text" or "json_object", but got: {kind}')
    return schema


def from_response_format(response_format: Any) -> ConstraintSpec | None:
    """OpenAI's response_format (or the Responses API's text.format) alone: text is no constraint,
    json_object any object or its 'schema', json_schema its schema."""
    if response_format is None:
        return None
    schema = _schema_of_format(response_format, None)
    return None if schema is None else from_json_schema(schema)


def from_chat(body: dict) -> ConstraintSpec | None:
    """A chat request as llama-server reads it: its native grammar/json_schema fields, and response_format,
    which sets the schema; a json_schema together with a grammar is refused."""
    schema, grammar = body.get("json_schema"), body.get("grammar")
    if schema is not None and grammar:
        raise ConstraintError("Cannot use both json_schema and grammar")
    if body.get("response_format") is not None:
        schema = _schema_of_format(body["response_format"], schema)
    return from_fields({**body, "json_schema": schema, "grammar": grammar or None})


def from_fields(body: dict) -> ConstraintSpec | None:
    """llama-server's native fields: grammar, json_schema, grammar_lazy, grammar_triggers (None: none set)."""
    lazy = body.get("grammar_lazy") is True
    raw = body.get("grammar_triggers") or []
    if not isinstance(raw, list):
        raise ConstraintError("grammar_triggers: must be an array")
    triggers = tuple(Trigger.from_json(t) for t in raw)
    grammar = body.get("grammar")
    if body.get("json_schema") is not None and grammar is None:
        return from_json_schema(body["json_schema"], lazy=lazy, triggers=triggers)
    if grammar is None or grammar == "":
        return None
    return from_gbnf(grammar, lazy=lazy, triggers=triggers)

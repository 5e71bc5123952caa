"""JSON Schema as llama.cpp's converter reads it (common/json-schema.cpp), where that differs from the standard.

llama-server's clients get llama.cpp's reading, so the schema is rewritten to say it explicitly before
llguidance compiles it: objects listing properties are closed, a list under `items` is an exact tuple, and a
schema without a type takes it from its keywords.
"""
from __future__ import annotations

from typing import Any

# where subschemas sit: keyword -> one schema, a list of them, or a name -> schema map
_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else", "additionalItems")
_LIST = ("anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "$defs", "definitions", "patternProperties")
# keywords that decide a schema's values by themselves: no type is inferred next to them
_SELF_TYPED = ("type", "$ref", "anyOf", "oneOf", "const", "enum", "not")
_STRING_WORDS = ("pattern", "minLength", "maxLength", "format")


def _infer_type(schema: dict) -> None:
    """llama.cpp: without a type the structural keywords decide, objects first, then arrays, then strings."""
    if any(k in schema for k in _SELF_TYPED):
        return
    if "properties" in schema or schema.get("additionalProperties", True) is not True:
        schema["type"] = "object"
    elif "allOf" in schema:
        return
    elif "items" in schema or "prefixItems" in schema:
        schema["type"] = "array"
    elif any(k in schema for k in _STRING_WORDS):
        schema["type"] = "string"


def as_llama_cpp_reads_it(schema: Any, *, under_all_of: bool = False) -> Any:
    """A rewritten copy (the request's own dict is left alone).

    - An object schema that lists `properties` and says nothing of `additionalProperties` allows no other
      keys; JSON Schema would allow any, and an open object lets a model add keys until n_predict runs out.
      allOf parts stay open, since each describes only a share of the object's keys.
    - A list under `items` (or `prefixItems`, when there is no `items`) is a tuple of exactly those items.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    _infer_type(out)
    if "properties" in out and "additionalProperties" not in out and not under_all_of:
        out["additionalProperties"] = False
    key = "items" if "items" in out else "prefixItems"
    if isinstance(out.get(key), list):
        out["prefixItems"], out["items"] = out[key], False
        out.setdefault("minItems", len(out["prefixItems"]))
    for k in _ONE:
        if isinstance(out.get(k), dict):
            out[k] = as_llama_cpp_reads_it(out[k])
    for k in _LIST:
        if isinstance(out.get(k), list):
            out[k] = [as_llama_cpp_reads_it(s) for s in out[k]]
    for k in _MAP:
        if isinstance(out.get(k), dict):
            out[k] = {name: as_llama_cpp_reads_it(s) for name, s in out[k].items()}
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [as_llama_cpp_reads_it(s, under_all_of=True) for s in out["allOf"]]
    return out

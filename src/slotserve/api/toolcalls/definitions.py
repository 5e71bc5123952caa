"""A chat request's tools, tool_choice and parallel_tool_calls, checked once.

A tool whose parameters do not compile as a JSON schema is refused here, naming it: the grammar a call is
constrained by is built from these schemas, so a bad one would otherwise fail later, inside a stream.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ...constraint import ConstraintError, from_json_schema
from ..fields import field_error

# OpenAI's rule for function names, with the dots MCP tool names use; quotes and newlines can never appear,
# so a name is a literal in every call format
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NO_PARAMETERS = {"type": "object", "properties": {}}


class Choice(str, Enum):
    """What tool_choice asks for: free text or a call (auto), text only (none), a call (required, named)."""
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict  # the JSON schema of the call's arguments (an object)
    definition: dict  # the tool as the client sent it, for the chat template


@dataclass(frozen=True)
class ToolRequest:
    """The tools a request offers and how it lets the model use them."""
    tools: tuple[Tool, ...]
    choice: Choice = Choice.AUTO
    named: str | None = None  # the one tool a named tool_choice forces
    parallel: bool = False  # llama-server's default: one call per answer

    @property
    def calls(self) -> bool:
        """Whether the answer may hold calls at all."""
        return bool(self.tools) and self.choice != Choice.NONE

    def callable(self) -> tuple[Tool, ...]:
        """The tools a call may name (a named tool_choice narrows them to one)."""
        return tuple(t for t in self.tools if self.named is None or t.name == self.named)

    def template_tools(self) -> list[dict]:
        return [t.definition for t in self.tools]


def _tool(i: int, obj: Any) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(obj, dict):
        raise field_error(where, "must be an object")
    if obj.get("type", "function") != "function":
        raise field_error(f"{where}.type", f"is {obj.get('type')!r}; only 'function' tools are supported")
    fn = obj.get("function")
    if not isinstance(fn, dict):
        raise field_error(f"{where}.function", "must be an object with the function's name and parameters")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise field_error(f"{where}.function.name", "must be 1 to 64 letters, digits, '_', '.', ':' or '-'")
    params = fn.get("parameters", NO_PARAMETERS)
    if params is None:
        params = NO_PARAMETERS
    if not isinstance(params, dict):
        raise field_error(f"{where}.function.parameters", f"of tool {name!r} must be a JSON schema object")
    if params.get("type", "object") != "object":
        raise field_error(f"{where}.function.parameters", f"of tool {name!r} must describe an object "
                                                          f"(type 'object'), not {params.get('type')!r}")
    try:
        from_json_schema(params)
    except ConstraintError as exc:
        raise field_error(f"{where}.function.parameters", f"of tool {name!r} is not a usable JSON schema: "
                                                          f"{str(exc).removeprefix('json_schema: ')}") from None
    return Tool(name, params, obj if "type" in obj else {"type": "function", **obj})


def _choice(v: Any, names: set[str]) -> tuple[Choice, str | None]:
    if v is None:
        return Choice.AUTO, None
    if isinstance(v, str):
        if v in ("auto", "none", "required"):
            return Choice(v), None
        raise field_error("tool_choice", f"must be 'auto', 'none', 'required' or a named function, not {v!r}")
    fn = v.get("function") if isinstance(v, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise field_error("tool_choice", "must be 'auto', 'none', 'required' or "
                                         "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise field_error("tool_choice.function.name", f"names {name!r}, which is not one of the tools")
    return Choice.NAMED, name


def read_tools(tools: Any, tool_choice: Any, parallel: Any) -> ToolRequest | None:
    """The request's tool fields (None: it offers no tools); a malformed one is a 400 naming it."""
    if tools is None or tools == []:
        if tool_choice not in (None, "auto", "none"):
            raise field_error("tool_choice", "asks for a tool call, but the request has no tools")
        return None
    if not isinstance(tools, list):
        raise field_error("tools", "must be an array of tool definitions")
    defs = tuple(_tool(i, t) for i, t in enumerate(tools))
    names = [t.name for t in defs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise field_error("tools", f"defines the function {dup!r} more than once")
    choice, named = _choice(tool_choice, set(names))
    if parallel is not None and not isinstance(parallel, bool):
        raise field_error("parallel_tool_calls", "must be a boolean")
    return ToolRequest(defs, choice, named, bool(parallel))

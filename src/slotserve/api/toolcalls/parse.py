"""Calls read back out of an answer's text, whole or while it streams.

The grammar wrote the calls, so their envelope is exact text and their arguments valid JSON: reading them
is finding the envelope and where each JSON value ends. An answer still streaming is read the same way,
with what may yet turn into a call held back from the content and a call's arguments given as the text so
far (it only ever grows, so a client can concatenate the pieces).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .formats import CallFormat, GenericFormat

_DECODER = json.JSONDecoder()
_STRING_END = re.compile(r'(?<!\\)(?:\\\\)*"')  # the first quote no backslash escapes


@dataclass
class Call:
    name: str
    arguments: str  # the JSON text of the arguments object (so far, while streaming)
    done: bool = False


@dataclass
class Parsed:
    content: str
    calls: list[Call] = field(default_factory=list)


def _json_end(text: str, start: int) -> int | None:
    """Where the JSON value starting at `start` ends, or None while it is unfinished."""
    try:
        return _DECODER.raw_decode(text, start)[1]
    except json.JSONDecodeError:
        return None


def _held_back(text: str, marker: str) -> int:
    """How many trailing characters of `text` could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _calls(fmt: CallFormat, text: str, pos: int, names: tuple[str, ...]) -> list[Call]:
    calls: list[Call] = []
    while True:
        name = next((n for n in names if text.startswith(fmt.call_prefix(n), pos)), None)
        if name is None:
            return calls
        args_start = pos + len(fmt.call_prefix(name))
        end = _json_end(text, args_start)
        if end is None:
            calls.append(Call(name, text[args_start:]))
            return calls
        done = text.startswith("}", end)
        calls.append(Call(name, text[args_start:end], done))
        pos = end + 1
        if not done or not fmt.sep or not text.startswith(fmt.sep, pos):
            return calls
        pos += len(fmt.sep)


def _json_string_so_far(raw: str) -> str:
    """A JSON string's text seen so far, decoded; an escape cut in two waits for its end."""
    m = _STRING_END.search(raw)
    if m is not None:
        return json.loads('"' + raw[:m.end() - 1] + '"')
    for cut in range(len(raw), max(-1, len(raw) - 12), -1):  # the longest escape is a surrogate pair
        try:
            text = json.loads('"' + raw[:cut] + '"')
        except json.JSONDecodeError:
            continue
        return text[:-1] if text and "\ud800" <= text[-1] <= "\udbff" else text
    return ""


def parse(fmt: CallFormat, text: str, names: tuple[str, ...], *, final: bool, parallel: bool = False) -> Parsed:
    """The content and calls in `text`; before the end (`final` false) text that may still become a call's
    opening is not content yet."""
    if isinstance(fmt, GenericFormat):
        return _parse_generic(fmt, text, names, final=final, parallel=parallel)
    if fmt.at_start_only:
        stripped = text.lstrip()
        opening = fmt.open + '{"name": "'
        if stripped.startswith(opening):
            return Parsed("", _calls(fmt, text, len(text) - len(stripped) + len(fmt.open), names))
        if not final and opening.startswith(stripped):
            return Parsed("")
        return Parsed(text)
    start = text.find(fmt.open)
    if start < 0:
        return Parsed(text if final else text[:len(text) - _held_back(text, fmt.open)])
    return Parsed(text[:start], _calls(fmt, text, start + len(fmt.open), names))


def _parse_generic(fmt: GenericFormat, text: str, names: tuple[str, ...], *, final: bool, parallel: bool) -> Parsed:
    env = fmt.envelope(parallel)
    if text.startswith(env.open):
        return Parsed("", _calls(env, text, len(env.open), names))
    if text.startswith(fmt.response_open + '"'):
        return Parsed(_json_string_so_far(text[len(fmt.response_open) + 1:]))
    if final or not (env.open.startswith(text) or (fmt.response_open + '"').startswith(text)):
        return Parsed(text)  # not this format's JSON (tool_choice none): plain text
    return Parsed("")

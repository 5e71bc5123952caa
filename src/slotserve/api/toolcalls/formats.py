"""The tool-call formats: how a model writes calls, which template writes them that way, and its grammar.

Every format here is an envelope around JSON calls `{"name": NAME, "<args key>": ARGS}`: text that opens
the calls, a separator between two of them, text that closes them. llama.cpp's common/chat.cpp picks the
format from the template's source, looking for the marker the template writes a call with; we do the same.
A template that writes no calls gets llama.cpp's generic JSON format, which the prompt explains.
"""
from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass

from ...constraint import Trigger, TriggerType
from ...constraint.schema import as_llama_cpp_reads_it
from ...constraint.spec import JSON_WHITESPACE
from .definitions import Choice, Tool, ToolRequest

ALNUM = string.ascii_letters + string.digits


def random_id(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(ALNUM) for _ in range(n))


@dataclass(frozen=True)
class CallFormat:
    name: str
    open: str  # before the first call; what a lazy grammar triggers on
    sep: str  # between two calls
    close: str  # after the last call
    args_key: str = "arguments"
    parallel: bool = True  # the format can hold several calls
    at_start_only: bool = False  # calls open the answer or never come (Llama 3.x)
    marker: str = ""  # what in a template's source means it writes calls this way
    id_length: int = 24  # a call id's random part (Mistral's template insists on 9 characters)
    id_prefix: str = "call_"

    def call_prefix(self, name: str) -> str:
        return '{"name": ' + json.dumps(name) + ', "' + self.args_key + '": '

    def new_id(self) -> str:
        return random_id(self.id_prefix, self.id_length)

    def trigger(self) -> Trigger:
        """Where a lazy grammar starts constraining: the opening text (a pattern when it must open the answer)."""
        if self.at_start_only:  # the capture group is where the grammar takes over, after leading blanks
            return Trigger(TriggerType.PATTERN_FULL, r"(?s)\s*(" + re.escape(self.open + '{"name": "') + ").*")
        return Trigger(TriggerType.WORD, self.open)

    def grammar(self, req: ToolRequest) -> str:
        """llguidance Lark: the calls this request allows, each's arguments constrained by its schema."""
        return "\n".join(self.rules(req)) + "\n"

    def rules(self, req: ToolRequest) -> list[str]:
        tools = req.callable()
        calls = f"call ({_lit(self.sep)} call)*" if req.parallel and self.parallel else "call"
        pieces = [p for p in (_lit(self.open), calls, _lit(self.close)) if p]
        rules = ["%llguidance {}", "start: calls", "calls: " + " ".join(pieces),
                 "call: " + " | ".join(f"call_{i}" for i in range(len(tools)))]
        return rules + _call_rules(self, tools)


def _lit(text: str) -> str:
    return json.dumps(text) if text else ""


def _call_rules(fmt: CallFormat, tools: tuple[Tool, ...]) -> list[str]:
    rules = []
    for i, tool in enumerate(tools):
        schema = as_llama_cpp_reads_it(tool.parameters or {"type": "object"})
        # llama.cpp's JSON whitespace inside arguments too: a small model must not fill them with blank lines
        schema = {**schema, "x-guidance": {"whitespace_pattern": JSON_WHITESPACE}}
        rules.append(f"call_{i}: {_lit(fmt.call_prefix(tool.name))} args_{i} \"}}\"")
        rules.append(f"args_{i}: %json " + json.dumps(schema))
    return rules


HERMES = CallFormat("hermes", open="<tool_call>\n", sep="\n</tool_call>\n<tool_call>\n", close="\n</tool_call>",
                    marker="<tool_call>")
LLAMA3 = CallFormat("llama3", open="", sep="", close="", args_key="parameters", parallel=False,
                    at_start_only=True, marker="<|start_header_id|>ipython<|end_header_id|>")
NEMO = CallFormat("mistral_nemo", open="[TOOL_CALLS][", sep=", ", close="]", marker="[TOOL_CALLS]",
                  id_length=9, id_prefix="")


@dataclass(frozen=True)
class GenericFormat(CallFormat):
    """llama.cpp's format for templates that know nothing of tools: the whole answer is one JSON object,
    {"tool_calls": [...]} (or {"tool_call": {...}} when only one is allowed) or {"response": "..."}."""
    response_open: str = '{"response": '
    single: CallFormat | None = None  # the envelope when parallel calls are not allowed

    def envelope(self, parallel: bool) -> CallFormat:
        return self if parallel or self.single is None else self.single

    def rules(self, req: ToolRequest) -> list[str]:
        env = self.envelope(req.parallel)
        rules = CallFormat.rules(env, req)
        if req.choice == Choice.AUTO:  # a plain answer is a JSON string under "response"
            rules[1] = "start: calls | response"
            rules.append(f"response: {_lit(self.response_open)} response_text \"}}\"")
            rules.append('response_text: %json {"type": "string"}')
        return rules


GENERIC = GenericFormat("generic", open='{"tool_calls": [', sep=", ", close="]}",
                        single=CallFormat("generic", open='{"tool_call": ', sep="", close="}", parallel=False))
GENERIC_PROMPT = ("Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` "
                  "reply to the user's request")

FORMATS = (HERMES, NEMO, LLAMA3)


def detect(template_source: str) -> CallFormat:
    """The format a template writes calls in, by the marker in its source (chat.cpp's order)."""
    for fmt in FORMATS:
        if fmt.marker in template_source:
            return fmt
    return GENERIC

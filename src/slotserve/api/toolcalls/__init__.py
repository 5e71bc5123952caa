"""Tool calls: a chat request's tools rendered into the prompt, calls generated under a grammar built from
the tools' schemas (so they are well-formed and match them), and read back out of the answer.

`plan(tools, tool_choice, parallel_tool_calls, template_source)` -> a `ToolCalls` (None: no tools offered);
`for_template(messages, fmt, tools)` readies earlier calls and results for the template.
"""
from __future__ import annotations

from typing import Any

from .definitions import Choice, Tool, ToolRequest, read_tools
from .formats import GENERIC, CallFormat, detect
from .history import for_template
from .plan import Answered, CallStream, Delta, OutCall, ToolCalls


def plan(tools: Any, tool_choice: Any, parallel: Any, template_source: str) -> ToolCalls | None:
    req = read_tools(tools, tool_choice, parallel)
    return None if req is None else ToolCalls(detect(template_source), req)


__all__ = ["GENERIC", "Answered", "CallFormat", "CallStream", "Choice", "Delta", "OutCall", "Tool", "ToolCalls",
           "ToolRequest", "detect", "for_template", "plan", "read_tools"]

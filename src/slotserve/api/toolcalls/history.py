"""Earlier calls and their results in a chat's messages, made ready for the chat template.

Templates read a call's arguments as an object (they `tojson` them) and test `'tool_calls' in message`,
so arguments are parsed and an empty tool_calls key is dropped. A template that knows nothing of tools
(llama.cpp's generic format) gets the calls as the JSON it asks the model to answer in, and the results
as user messages, as llama.cpp's template polyfills write them.
"""
from __future__ import annotations

import json

from ..fields import field_error
from .formats import GENERIC_PROMPT, CallFormat, GenericFormat


def _call(where: str, tc) -> dict:
    if not isinstance(tc, dict):
        raise field_error(where, "must be an object")
    if tc.get("type", "function") != "function":
        raise field_error(f"{where}.type", f"is {tc.get('type')!r}; only 'function' calls are supported")
    fn = tc.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise field_error(f"{where}.function", "must be an object with the function's 'name'")
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise field_error(f"{where}.function.arguments", f"is not valid JSON: {exc}") from None
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if tc.get("id") is not None:
        out["id"] = tc["id"]
    return out


def with_calls(messages: list[dict]) -> list[dict]:
    """Assistant tool_calls checked and their arguments parsed; a tool message must answer a call made
    earlier in the conversation (its tool_call_id), as the OpenAI API requires."""
    out, ids = [], set()
    for i, msg in enumerate(messages):
        m = dict(msg)
        calls = m.pop("tool_calls", None)
        if calls:
            if not isinstance(calls, list):
                raise field_error(f"messages[{i}].tool_calls", "must be an array")
            m["tool_calls"] = [_call(f"messages[{i}].tool_calls[{j}]", tc) for j, tc in enumerate(calls)]
            ids.update(tc["id"] for tc in m["tool_calls"] if "id" in tc)
            if m.get("content") is None:
                m["content"] = ""  # templates concatenate it (llama.cpp's requires_non_null_content)
        if m["role"] == "tool" and m.get("tool_call_id") is not None and m["tool_call_id"] not in ids:
            raise field_error(f"messages[{i}].tool_call_id", f"is {m['tool_call_id']!r}, which answers no tool call "
                                                             "made earlier in the conversation")
        out.append(m)
    return out


def for_template(messages: list[dict], fmt: CallFormat, tools: list[dict] | None) -> list[dict]:
    """The messages as `fmt`'s template takes them; with the generic format, calls and results become text
    and, when calls are allowed (`tools`), the system message lists the tools and says how to answer."""
    messages = with_calls(messages)
    if not isinstance(fmt, GenericFormat):
        return messages
    names = {tc["id"]: tc["function"]["name"] for m in messages for tc in m.get("tool_calls", []) if "id" in tc}
    out = []
    for m in messages:
        if "tool_calls" in m:
            calls = [{"name": tc["function"]["name"], "arguments": tc["function"]["arguments"],
                      **({"id": tc["id"]} if "id" in tc else {})} for tc in m.pop("tool_calls")]
            body = {"tool_calls": calls} if len(calls) > 1 else {"tool_call": calls[0]}
            m = {**m, "content": json.dumps(body, ensure_ascii=False)}
        elif m["role"] == "tool":
            result = {"tool": names.get(m.get("tool_call_id"), ""), "content": m.get("content") or ""}
            if m.get("tool_call_id") is not None:
                result["tool_call_id"] = m["tool_call_id"]
            m = {"role": "user", "content": json.dumps({"tool_response": result}, ensure_ascii=False)}
        out.append(m)
    if tools:
        prompt = (GENERIC_PROMPT + "\n\nYou can call any of the following tools to satisfy the user's requests: "
                  + json.dumps(tools, indent=2, ensure_ascii=False))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": (out[0]["content"] or "") + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out

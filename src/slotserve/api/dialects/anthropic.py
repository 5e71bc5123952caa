"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), as llama-server serves it: the
request becomes an OpenAI chat request (server_chat_convert_anthropic_to_oai), the answer is written in
Anthropic's shapes. Tools become chat tools (tool_use blocks out, tool_result blocks in, input_json_delta
events while streaming); images are refused with a 400, as in the chat endpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

from ...engine.tasks import CompletionResult, TokenOut
from ..errors import ApiError
from ..fields import Int, Stop, field_error
from ..schema import Body as _Body
from ..schema import Generation, validate
from ..state import ApiState
from ..toolcalls import Delta
from .openai_chat import parse_chat
from .shared import Answer as BaseAnswer
from .shared import event, sse, sse_events

PATHS = ("/v1/messages",)
INPUT_TOKENS_PATHS = ("/v1/messages/count_tokens",)
PASSED_ON = ("temperature", "top_p", "top_k", "stream", "chat_template_kwargs")
DEFAULT_MAX_TOKENS = 4096  # llama-server's, when a request has none


def _tools(v, info: ValidationInfo):
    """Anthropic's {name, description, input_schema} as chat function tools (the chat layer checks them)."""
    if not isinstance(v, list):
        raise field_error("tools", "must be an array of tools")
    out = []
    for i, tool in enumerate(v):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise field_error(f"tools[{i}]", f"is a {kind!r} tool; only client tools with an input_schema are supported")
        fn = {k: tool[k] for k in ("name", "description") if k in tool}
        out.append({"type": "function", "function": {**fn, "parameters": tool.get("input_schema")}})
    return out


def _tool_choice(v, info: ValidationInfo):
    kind = v.get("type") if isinstance(v, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(v.get("name"), str):
        return {"type": "function", "function": {"name": v["name"]}}
    raise field_error("tool_choice", "must be {type: auto | any | none} or {type: tool, name}")


def _system(v, info: ValidationInfo):
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "".join(b.get("text", "") for b in v if isinstance(b, dict) and b.get("type") == "text")
    raise field_error("system", "must be a string or an array of text blocks")


def _messages(v, info: ValidationInfo):
    if not isinstance(v, list):
        raise field_error("messages", "must be an array")
    return v


class Body(_Body):
    """POST /v1/messages. Sampling fields other than these are the chat endpoint's (temperature, top_p,
    top_k, stream, chat_template_kwargs are passed on to it)."""
    messages: Annotated[list, BeforeValidator(_messages)] = Field(description="{role, content} messages; content "
                                                                              "a string or text blocks")
    system: Annotated[str | None, BeforeValidator(_system)] = None
    max_tokens: Int(lo=-1) = None
    stop_sequences: Stop = None
    tools: Annotated[Any, BeforeValidator(_tools)] = None
    tool_choice: Annotated[Any, BeforeValidator(_tool_choice)] = None


def _text(content) -> str:
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return content if isinstance(content, str) else ""


def _messages_of(msg: dict, where: str) -> list[dict]:
    """One Anthropic message as chat messages: tool_use blocks become the assistant's tool_calls, each
    tool_result block a tool message (ahead of the user's text, which follows the results)."""
    content = msg.get("content")
    if not isinstance(content, list):
        return [msg]
    parts, calls, results = [], [], []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": ""}})
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": json.dumps(block.get("input", {}), ensure_ascii=False)}})
        elif kind == "tool_result":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _text(block.get("content", ""))})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: no template here has a place for it
        else:
            raise field_error(f"{where}.content[{i}]", f"has unknown block type {kind!r}")
    if calls:
        return [{"role": msg.get("role"), "content": parts or None, "tool_calls": calls}]
    return results + ([{**msg, "content": parts}] if parts or not results else [])


def to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for an Anthropic Messages request."""
    req = validate(Body, body)
    messages = [] if req.system is None else [{"role": "system", "content": req.system}]
    for i, msg in enumerate(req.messages):
        if not isinstance(msg, dict):
            raise field_error(f"messages[{i}]", "must be an object")
        if "content" not in msg and msg.get("role") == "assistant":
            continue
        messages += _messages_of(msg, f"messages[{i}]")
    chat = {"messages": messages, "max_tokens": DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens}
    if req.stop_sequences is not None:
        chat["stop"] = req.stop_sequences
    if req.tools:
        chat["tools"], chat["tool_choice"] = req.tools, req.tool_choice
        # Anthropic lets the model make several calls unless told not to
        chat["parallel_tool_calls"] = not (body.get("tool_choice") or {}).get("disable_parallel_tool_use", False)
    chat.update({k: body[k] for k in PASSED_ON if k in body})
    return chat


def parse(body: dict, st: ApiState) -> Generation:
    return parse_chat(to_chat(body), st)


def input_tokens_json(n_prompt: int) -> dict:
    return {"input_tokens": n_prompt}


def stop_reason(stop_type: str) -> str:
    return "end_turn" if stop_type in ("word", "eos") else "max_tokens"


def usage(n_prompt: int, n_cached: int, n_decoded: int) -> dict:
    return {"cache_read_input_tokens": n_cached, "input_tokens": n_prompt - n_cached, "output_tokens": n_decoded}


def blocks(content: str | None, calls) -> list[dict]:
    """An answer's content blocks: its text, then a tool_use block per call."""
    out = [{"type": "text", "text": content}] if content else []
    return out + [{"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments)} for c in calls]


@dataclass
class Answer(BaseAnswer):
    @dataclass
    class State(BaseAnswer.State):
        open_kind: str | None = None  # the kind of the content block open now ("text", "tool_use")
        n_blocks: int = 0

    def body(self, results: list[CompletionResult]) -> dict:
        r = results[0]
        got = self.answered(r)
        return {"id": self.cmpl_id, "type": "message", "role": "assistant", "content": blocks(got.content, got.calls),
                "model": self.model, "stop_reason": "tool_use" if got.calls else stop_reason(r.stop_type),
                "stop_sequence": r.stopping_word or None,
                "usage": usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def token_events(self, index: int, out: TokenOut, s: State) -> str:
        """message_start with the first token, then content blocks: a text block opened at the first text,
        a tool_use block per call (its input as input_json_delta pieces)."""
        events = []
        if s.n_decoded == 1:
            n_prompt = len(self.gen.requests[index].prompt_tokens)
            events.append(event("message_start", message={
                "id": self.cmpl_id, "type": "message", "role": "assistant", "content": [], "model": self.model,
                "stop_reason": None, "stop_sequence": None, "usage": usage(n_prompt, out.cache_n or 0, 0)}))
        for d in self.deltas(out.text, s):
            events += self._block_events(d, s)
        return sse_events(events)

    def _block_events(self, d: Delta, s: State) -> list[dict]:
        events = []
        kind = "text" if d.index < 0 else "tool_use"
        if s.open_kind != kind or d.name is not None:  # a new block: text after a call, or the next call
            if s.open_kind is not None:
                events.append(event("content_block_stop", index=s.n_blocks - 1))
            block = ({"type": "text", "text": ""} if kind == "text" else
                     {"type": "tool_use", "id": d.id, "name": d.name, "input": {}})
            events.append(event("content_block_start", index=s.n_blocks, content_block=block))
            s.open_kind, s.n_blocks = kind, s.n_blocks + 1
        if kind == "text":
            events.append(event("content_block_delta", index=s.n_blocks - 1,
                                delta={"type": "text_delta", "text": d.content}))
        elif d.arguments:
            events.append(event("content_block_delta", index=s.n_blocks - 1,
                                delta={"type": "input_json_delta", "partial_json": d.arguments}))
        return events

    def final_events(self, index: int, r: CompletionResult, s: State) -> str:
        events = [e for d in self.deltas("", s, final=True) for e in self._block_events(d, s)]
        if s.open_kind is not None:
            events.append(event("content_block_stop", index=s.n_blocks - 1))
        reason = "tool_use" if self.made_calls(s) else stop_reason(r.stop_type)
        return sse_events(events + [
            event("message_delta", delta={"stop_reason": reason, "stop_sequence": r.stopping_word or None},
                  usage={"output_tokens": len(r.tokens)}),
            event("message_stop")])

    def error(self, err: ApiError) -> str:
        return "event: error\n" + sse(err.body()["error"])  # llama-server: the error object itself

"""OpenAI's Responses API (POST /v1/responses), as llama-server serves it: the request becomes a chat
request (server_chat_convert_responses_to_chatcmpl), the answer is written as a response object, or as
its typed events when streamed. Function tools become chat tools: function_call items out (their arguments
streamed as response.function_call_arguments.delta), function_call_output items in. Files are refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

from ...engine.tasks import CompletionResult, PromptProgress, TokenOut
from ..fields import Int, Object, field_error
from ..toolcalls import Delta
from ..schema import Body as _Body
from ..schema import Generation, validate
from ..state import ApiState
from .openai_chat import input_tokens_json, parse_chat  # noqa: F401  (this dialect's input_tokens answer too)
from .shared import Answer as BaseAnswer
from .shared import event, random_id, sse_events, with_progress

PATHS = ("/responses", "/v1/responses")
INPUT_TOKENS_PATHS = ("/responses/input_tokens", "/v1/responses/input_tokens")
TEXT_PARTS = ("input_text", "output_text")


def _no_previous(v, info: ValidationInfo):
    if v:
        raise field_error("previous_response_id", "is not supported by slotserve: send the whole conversation "
                                                  "as 'input'")
    return v


def _input(v, info: ValidationInfo):
    if isinstance(v, str):
        return [{"role": "user", "content": v}]
    if not isinstance(v, list):
        raise field_error("input", "must be a string or an array of input items")
    return v


def _tools(v, info: ValidationInfo):
    """The Responses API's flat {type: function, name, parameters} as chat function tools."""
    if not isinstance(v, list):
        raise field_error("tools", "must be an array of tools")
    out = []
    for i, tool in enumerate(v):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise field_error(f"tools[{i}]", f"is a {kind!r} tool; only function tools are supported")
        fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(v, info: ValidationInfo):
    if isinstance(v, dict) and v.get("type") == "function" and "function" not in v:
        return {"type": "function", "function": {"name": v.get("name")}}
    return v  # auto, none, required (the chat layer checks them)


class Body(_Body):
    """POST /v1/responses. Other fields are the chat endpoint's, passed on to it."""
    input: Annotated[list, BeforeValidator(_input)] = Field(description="a string, or an array of message items")
    instructions: Any = Field(None, description="a system message before the input")
    max_output_tokens: Int(lo=-1) = None
    previous_response_id: Annotated[Any, BeforeValidator(_no_previous)] = None
    text: Object = None  # {"format": {"type": "text" | "json_object" | "json_schema", "schema": ...}}
    tools: Annotated[Any, BeforeValidator(_tools)] = None
    tool_choice: Annotated[Any, BeforeValidator(_tool_choice)] = None


def _parts(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise field_error(f"{where}.content", "must be a string or an array")
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise field_error(f"{where}.content[{i}]", f"({kind}) requires 'text'")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url", "")}})
        elif kind == "input_file":
            raise field_error(f"{where}.content[{i}]", "is an 'input_file', which slotserve does not support")
        else:
            raise field_error(f"{where}.content[{i}]", f"'type' must be one of {', '.join(TEXT_PARTS)} or input_image")
    return parts


def _call_message(item: dict, where: str, messages: list[dict]) -> dict:
    """A function_call item as an assistant's tool call (consecutive calls share one message, which is then
    returned again after merging), a function_call_output as the tool message answering it."""
    if item["type"] == "function_call_output":
        out = item.get("output")
        if not isinstance(out, (str, list)):
            raise field_error(f"{where}.output", "must be a string or an array of content parts")
        return {"role": "tool", "tool_call_id": item.get("call_id"),
                "content": out if isinstance(out, str) else _parts(out, where)}
    if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments", "{}"), str):
        raise field_error(where, "(function_call) needs a string 'name' and 'arguments'")
    call = {"id": item.get("call_id"), "type": "function",
            "function": {"name": item["name"], "arguments": item.get("arguments", "{}")}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        messages.pop()
        return {**last, "tool_calls": last["tool_calls"] + [call]}
    if last is not None and last["role"] == "assistant":  # the text the calls came with
        messages.pop()
        return {**last, "tool_calls": [call]}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for a Responses request."""
    req = validate(Body, body)
    messages = [] if "instructions" not in body else [{"role": "system", "content": req.instructions}]
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise field_error(where, "must be an object")
        if item.get("type") in ("function_call", "function_call_output"):
            messages.append(_call_message(item, where, messages))
            continue
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise field_error(f"{where}.role", "must be one of user, system, developer or assistant")
        parts = _parts(item.get("content"), where)
        if role == "assistant" and messages and messages[-1]["role"] == "assistant" and "tool_calls" not in messages[-1]:
            messages[-1]["content"] += parts  # llama-server merges consecutive assistant items
        else:
            messages.append({"role": role, "content": parts})
    chat = {k: v for k, v in body.items() if k not in ("input", "instructions", "max_output_tokens", "tools",
                                                       "tool_choice")}
    chat["messages"] = messages
    if req.tools:
        chat["tools"], chat["tool_choice"] = req.tools, req.tool_choice
    if req.max_output_tokens is not None:
        chat["max_tokens"] = req.max_output_tokens
    if (req.text or {}).get("format") is not None:
        chat["response_format"] = req.text["format"]  # the chat endpoint reads its unwrapped json_schema too
    return chat


def parse(body: dict, st: ApiState) -> Generation:
    return parse_chat(to_chat(body), st)


def usage(n_prompt: int, n_cached: int, n_decoded: int) -> dict:
    return {"input_tokens": n_prompt, "output_tokens": n_decoded, "total_tokens": n_prompt + n_decoded,
            "input_tokens_details": {"cached_tokens": n_cached}}


def text_part(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


@dataclass
class Answer(BaseAnswer):
    resp_id: str = field(default_factory=lambda: random_id("resp_"))
    msg_id: str = field(default_factory=lambda: random_id("msg_"))

    @dataclass
    class State(BaseAnswer.State):
        started: bool = False  # response.created is out
        has_text: bool = False  # the message item is open
        items: list = field(default_factory=list)  # output items so far: the message's id, or a call's item

    def _response(self, status: str, **more) -> dict:
        return {"id": self.resp_id, "object": "response", "status": status, **more}

    def _message_item(self, text: str, status: str) -> dict:
        return {"type": "message", "status": status, "id": self.msg_id, "role": "assistant",
                "content": [text_part(text)] if status == "completed" else []}

    def body(self, results: list[CompletionResult]) -> dict:
        r, t = results[0], int(time.time())
        got = self.answered(r)
        output = [self._message_item(got.content, "completed")] if got.content else []
        output += [call_item(random_id("fc_"), c.id, c.name, c.arguments, "completed") for c in got.calls]
        return {"completed_at": t, "created_at": t, **self._response("completed"), "model": self.model,
                "output": output, "usage": usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def token_events(self, index: int, out: TokenOut, s: State) -> str:
        return self._progress_or_token(out, s)

    def progress_events(self, index: int, p: PromptProgress, s: State) -> str:
        return self._progress_or_token(p, s)

    def _progress_or_token(self, out: TokenOut | PromptProgress, s: State) -> str:
        """response.created and .in_progress first, the message item and its text part at the first text,
        then a text delta a token; a call is an item of its own, its arguments streamed in pieces."""
        events = []
        if not s.started:
            events.append(event("response.created", response=self._response("in_progress")))
        if not s.started or isinstance(out, PromptProgress):
            events.append(event("response.in_progress", response=self._response("in_progress")))
        if isinstance(out, TokenOut):
            events += [e for d in self.deltas(out.text, s) for e in self._delta_events(d, s)]
        if events and isinstance(out, PromptProgress):
            with_progress(events[-1]["data"], out)
        elif events and out.timings is not None:
            events[-1]["data"]["timings"] = out.timings.as_dict()
        s.started = True
        return sse_events(events)

    def _delta_events(self, d: Delta, s: State) -> list[dict]:
        if d.index < 0:
            events = []
            if not s.has_text:
                s.items.append(self.msg_id)
                events.append(event("response.output_item.added", output_index=len(s.items) - 1,
                                    item=self._message_item("", "in_progress")))
                events.append(event("response.content_part.added", item_id=self.msg_id,
                                    part={"type": "output_text", "text": ""}))
            s.has_text = True
            return events + [event("response.output_text.delta", item_id=self.msg_id, delta=d.content)]
        if d.name is not None:
            s.items.append(call_item(random_id("fc_"), d.id, d.name, "", "in_progress"))
            return [event("response.output_item.added", output_index=len(s.items) - 1, item=dict(s.items[-1]))]
        item = next(it for it in s.items if isinstance(it, dict) and it["call_id"] == s.calls.ids[d.index])
        item["arguments"] += d.arguments
        return [event("response.function_call_arguments.delta", item_id=item["id"],
                      output_index=s.items.index(item), delta=d.arguments)]

    def final_events(self, index: int, r: CompletionResult, s: State) -> str:
        events = [e for d in self.deltas("", s, final=True) for e in self._delta_events(d, s)]
        output, n_done = [], s.calls.n_done if s.calls is not None else 0
        for n, it in enumerate(s.items):
            if it == self.msg_id:
                item = self._message_item(self._text(r, s), "completed")
                events += [event("response.output_text.done", item_id=self.msg_id, text=item["content"][0]["text"]),
                           event("response.content_part.done", item_id=self.msg_id, part=item["content"][0])]
            else:
                k = s.calls.ids.index(it["call_id"])
                item = {**it, "status": "completed" if k < n_done else "incomplete"}
                events.append(event("response.function_call_arguments.done", item_id=it["id"], output_index=n,
                                    arguments=it["arguments"]))
            events.append(event("response.output_item.done", output_index=n, item=item))
            output.append(item)
        response = self._response("completed", created_at=int(time.time()), model=self.model, output=output,
                                  usage=usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens)))
        finished = event("response.completed", response=response)
        finished["data"]["timings"] = r.timings.as_dict()
        return sse_events(events + [finished])

    def _text(self, r: CompletionResult, s: State) -> str:
        """The message's text: the whole answer, or with tools what of it was content."""
        return r.content if s.calls is None else s.calls.plan.read(r.content, final=True).content

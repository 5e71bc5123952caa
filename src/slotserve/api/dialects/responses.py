"""OpenAI's Responses API (POST /v1/responses), as llama-server serves it: the request becomes a chat
request (server_chat_convert_responses_to_chatcmpl), the answer is written as a response object, or as
its typed events when streamed. Text only: function calls and files are refused with a 400.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

from ...engine.tasks import CompletionResult, PromptProgress, TokenOut
from ..fields import Int, Object, field_error
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


class Body(_Body):
    """POST /v1/responses. Other fields are the chat endpoint's, passed on to it."""
    input: Annotated[list, BeforeValidator(_input)] = Field(description="a string, or an array of message items")
    instructions: Any = Field(None, description="a system message before the input")
    max_output_tokens: Int(lo=-1) = None
    previous_response_id: Annotated[Any, BeforeValidator(_no_previous)] = None
    text: Object = None  # {"format": {"type": "text" | "json_object" | "json_schema", "schema": ...}}


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


def to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for a Responses request."""
    req = validate(Body, body)
    messages = [] if "instructions" not in body else [{"role": "system", "content": req.instructions}]
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise field_error(where, "must be an object")
        if item.get("type") in ("function_call", "function_call_output"):
            raise field_error(where, "asks for tool calling, which slotserve does not support")
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise field_error(f"{where}.role", "must be one of user, system, developer or assistant")
        parts = _parts(item.get("content"), where)
        if role == "assistant" and messages and messages[-1]["role"] == "assistant":
            messages[-1]["content"] += parts  # llama-server merges consecutive assistant items
        else:
            messages.append({"role": role, "content": parts})
    chat = {k: v for k, v in body.items() if k not in ("input", "instructions", "max_output_tokens")}
    chat["messages"] = messages
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


@dataclass
class Answer(BaseAnswer):
    resp_id: str = field(default_factory=lambda: random_id("resp_"))
    msg_id: str = field(default_factory=lambda: random_id("msg_"))

    @dataclass
    class State(BaseAnswer.State):
        started: bool = False  # response.created is out
        has_text: bool = False  # the message item is open

    def _response(self, status: str, **more) -> dict:
        return {"id": self.resp_id, "object": "response", "status": status, **more}

    def _message_item(self, text: str, status: str) -> dict:
        return {"type": "message", "status": status, "id": self.msg_id, "role": "assistant",
                "content": [text_part(text)] if status == "completed" else []}

    def body(self, results: list[CompletionResult]) -> dict:
        r, t = results[0], int(time.time())
        return {"completed_at": t, "created_at": t, **self._response("completed"), "model": self.model,
                "output": [self._message_item(r.content, "completed")] if r.content else [],
                "usage": usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def token_events(self, index: int, out: TokenOut, s: State) -> str:
        return self._progress_or_token(out, s)

    def progress_events(self, index: int, p: PromptProgress, s: State) -> str:
        return self._progress_or_token(p, s)

    def _progress_or_token(self, out: TokenOut | PromptProgress, s: State) -> str:
        """response.created and .in_progress first, the message item and its text part at the first text,
        then a text delta a token."""
        events = []
        if not s.started:
            events.append(event("response.created", response=self._response("in_progress")))
        if not s.started or isinstance(out, PromptProgress):
            events.append(event("response.in_progress", response=self._response("in_progress")))
        if isinstance(out, TokenOut) and out.text:
            if not s.has_text:
                events.append(event("response.output_item.added", item=self._message_item("", "in_progress")))
                events.append(event("response.content_part.added", item_id=self.msg_id,
                                    part={"type": "output_text", "text": ""}))
            events.append(event("response.output_text.delta", item_id=self.msg_id, delta=out.text))
            s.has_text = True
        if events and isinstance(out, PromptProgress):
            with_progress(events[-1]["data"], out)
        elif events and out.timings is not None:
            events[-1]["data"]["timings"] = out.timings.as_dict()
        s.started = True
        return sse_events(events)

    def final_events(self, index: int, r: CompletionResult, s: State) -> str:
        events, output = [], []
        if r.content:
            item = self._message_item(r.content, "completed")
            events += [event("response.output_text.done", item_id=self.msg_id, text=r.content),
                       event("response.content_part.done", item_id=self.msg_id, part=item["content"][0]),
                       event("response.output_item.done", item=item)]
            output.append(item)
        done = event("response.completed", response=self._response(
            "completed", created_at=int(time.time()), model=self.model, output=output,
            usage=usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))))
        done["data"]["timings"] = r.timings.as_dict()
        return sse_events(events + [done])

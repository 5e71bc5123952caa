"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), as llama-server serves it: the
request becomes an OpenAI chat request (server_chat_convert_anthropic_to_oai), the answer is written in
Anthropic's shapes. Text only: tool use and images are refused with a 400, as in the chat endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo

from ...engine.tasks import CompletionResult, TokenOut
from ..errors import ApiError
from ..fields import Int, Stop, field_error
from ..schema import Body as _Body
from ..schema import Generation, validate
from ..state import ApiState
from .openai_chat import parse_chat
from .shared import Answer as BaseAnswer
from .shared import event, sse, sse_events

PATHS = ("/v1/messages",)
INPUT_TOKENS_PATHS = ("/v1/messages/count_tokens",)
PASSED_ON = ("temperature", "top_p", "top_k", "stream", "chat_template_kwargs")
DEFAULT_MAX_TOKENS = 4096  # llama-server's, when a request has none


def _no_tools(v, info: ValidationInfo):
    if v:
        raise field_error("tools", "asks for tool calling, which slotserve does not support")
    return v


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
    tools: Annotated[Any, BeforeValidator(_no_tools)] = None


def _content(content, where: str):
    """A message's content as chat content: a string stays, text blocks become text parts. Images pass on
    as image parts (which the chat layer refuses for this text-only model); tool blocks are refused."""
    if not isinstance(content, list):
        return content
    parts = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": ""}})
        elif kind in ("tool_use", "tool_result"):
            raise field_error(f"{where}.content[{i}]", "asks for tool calling, which slotserve does not support")
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: no template here has a place for it
        else:
            raise field_error(f"{where}.content[{i}]", f"has unknown block type {kind!r}")
    return parts


def to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for an Anthropic Messages request."""
    req = validate(Body, body)
    messages = [] if req.system is None else [{"role": "system", "content": req.system}]
    for i, msg in enumerate(req.messages):
        if not isinstance(msg, dict):
            raise field_error(f"messages[{i}]", "must be an object")
        if "content" not in msg and msg.get("role") == "assistant":
            continue
        messages.append({**msg, "content": _content(msg.get("content"), f"messages[{i}]")})
    chat = {"messages": messages, "max_tokens": DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens}
    if req.stop_sequences is not None:
        chat["stop"] = req.stop_sequences
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


@dataclass
class Answer(BaseAnswer):
    @dataclass
    class State(BaseAnswer.State):
        has_text: bool = False  # the text block is open

    def body(self, results: list[CompletionResult]) -> dict:
        r = results[0]
        return {"id": self.cmpl_id, "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": r.content}] if r.content else [], "model": self.model,
                "stop_reason": stop_reason(r.stop_type), "stop_sequence": r.stopping_word or None,
                "usage": usage(r.tokens_evaluated, r.timings.cache_n, len(r.tokens))}

    def token_events(self, index: int, out: TokenOut, s: State) -> str:
        """message_start with the first token, then the text block: opened at the first text, one delta a token."""
        events = []
        if s.n_decoded == 1:
            n_prompt = len(self.gen.requests[index].prompt_tokens)
            events.append(event("message_start", message={
                "id": self.cmpl_id, "type": "message", "role": "assistant", "content": [], "model": self.model,
                "stop_reason": None, "stop_sequence": None, "usage": usage(n_prompt, out.cache_n or 0, 0)}))
        if out.text:
            if not s.has_text:
                events.append(event("content_block_start", index=0, content_block={"type": "text", "text": ""}))
            events.append(event("content_block_delta", index=0, delta={"type": "text_delta", "text": out.text}))
            s.has_text = True
        return sse_events(events)

    def final_events(self, index: int, r: CompletionResult, s: State) -> str:
        events = [event("content_block_stop", index=0)] if s.has_text else []
        return sse_events(events + [
            event("message_delta", delta={"stop_reason": stop_reason(r.stop_type),
                                          "stop_sequence": r.stopping_word or None},
                  usage={"output_tokens": len(r.tokens)}),
            event("message_stop")])

    def error(self, err: ApiError) -> str:
        return "event: error\n" + sse(err.body()["error"])  # llama-server: the error object itself

"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), as llama-server serves it:
the request becomes an OpenAI chat request (server_chat_convert_anthropic_to_oai), the answer is written
in Anthropic's shapes. Text only: tool use and images are refused with a 400, as in the chat endpoint.
"""
from __future__ import annotations

from .errors import invalid

PASSED_ON = ("temperature", "top_p", "top_k", "stream", "chat_template_kwargs")
DEFAULT_MAX_TOKENS = 4096  # llama-server's, when a request has none


def _system_text(system) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")
    raise invalid("'system' must be a string or an array of text blocks")


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
            raise invalid(f"'{where}.content[{i}]': tool calling is not supported by slotserve")
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: no template here has a place for it
        else:
            raise invalid(f"'{where}.content[{i}]' has unknown block type {kind!r}")
    return parts


def anthropic_to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for an Anthropic Messages request."""
    messages = []
    if body.get("system") is not None:
        messages.append({"role": "system", "content": _system_text(body["system"])})
    if "messages" not in body:
        raise invalid("'messages' is required")
    if not isinstance(body["messages"], list):
        raise invalid("'messages' must be an array")
    for i, msg in enumerate(body["messages"]):
        if not isinstance(msg, dict):
            raise invalid(f"'messages[{i}]' must be an object")
        if "content" not in msg and msg.get("role") == "assistant":
            continue
        messages.append({**msg, "content": _content(msg.get("content"), f"messages[{i}]")})
    chat = {"messages": messages, "max_tokens": body.get("max_tokens", DEFAULT_MAX_TOKENS)}
    if body.get("tools"):
        raise invalid("'tools': tool calling is not supported by slotserve")
    if "stop_sequences" in body:
        chat["stop"] = body["stop_sequences"]
    chat.update({k: body[k] for k in PASSED_ON if k in body})
    return chat


def stop_reason(stop_type: str) -> str:
    return "end_turn" if stop_type in ("word", "eos") else "max_tokens"


def usage(n_prompt: int, n_cached: int, n_decoded: int) -> dict:
    return {"cache_read_input_tokens": n_cached, "input_tokens": n_prompt - n_cached, "output_tokens": n_decoded}

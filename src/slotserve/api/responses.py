"""OpenAI's Responses API (POST /v1/responses), as llama-server serves it: the request becomes a chat
request (server_chat_convert_responses_to_chatcmpl), the answer is written as a response object, or as
its typed events when streamed. Text only: function calls and files are refused with a 400.
"""
from __future__ import annotations

from .errors import invalid

TEXT_PARTS = ("input_text", "output_text")


def _parts(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array")
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise invalid(f"'{where}.content[{i}]' ({kind}) requires 'text'")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url", "")}})
        elif kind == "input_file":
            raise invalid(f"'{where}.content[{i}]': 'input_file' is not supported by slotserve")
        else:
            raise invalid(f"'{where}.content[{i}]': 'type' must be one of {', '.join(TEXT_PARTS)} or input_image")
    return parts


def responses_to_chat(body: dict) -> dict:
    """An OpenAI chat-completions body for a Responses request."""
    if "input" not in body:
        raise invalid("'input' is required")
    if body.get("previous_response_id"):
        raise invalid("slotserve does not support 'previous_response_id': send the whole conversation as 'input'")
    fmt = body["text"].get("format") if isinstance(body.get("text"), dict) else None  # structured output
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise invalid(f"'text.format' of type {fmt.get('type')!r} needs grammar-constrained sampling, "
                      "which slotserve does not support")
    messages = []
    if "instructions" in body:
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise invalid("'input' must be a string or an array of input items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object")
        if item.get("type") in ("function_call", "function_call_output"):
            raise invalid(f"'{where}': tool calling is not supported by slotserve")
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise invalid(f"'{where}.role' must be one of user, system, developer or assistant")
        parts = _parts(item.get("content"), where)
        if role == "assistant" and messages and messages[-1]["role"] == "assistant":
            messages[-1]["content"] += parts  # llama-server merges consecutive assistant items
        else:
            messages.append({"role": role, "content": parts})
    chat = {k: v for k, v in body.items() if k not in ("input", "instructions", "max_output_tokens")}
    chat["messages"] = messages
    if "max_output_tokens" in body:
        chat["max_tokens"] = body["max_output_tokens"]
    return chat


def usage(n_prompt: int, n_cached: int, n_decoded: int) -> dict:
    return {"input_tokens": n_prompt, "output_tokens": n_decoded, "total_tokens": n_prompt + n_decoded,
            "input_tokens_details": {"cached_tokens": n_cached}}


def text_part(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

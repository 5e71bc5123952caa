"""What the front reads in a request body to route it: the prompt text (for the prefix index) and a cluster
slot id (id_slot: replica r, local slot s is r * n_parallel + s), which it turns into the replica's own;
and the replica's slot ids in its answers, turned back into cluster ids."""
from __future__ import annotations

import json
import re

from ..api.errors import invalid
from .routing import RouteHint

# the fields that carry a prompt, in every dialect: native and OpenAI (prompt, messages), Anthropic
# (system, messages), Responses (instructions, input), infill and embeddings (input_prefix, content)
PROMPT_FIELDS = ("system", "instructions", "prompt", "messages", "input", "input_prefix", "content")


def text_of(value) -> str:
    """A prompt as one string whose prefixes are the prompt's prefixes: a conversation's next turn
    starts with its previous turn's text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return f"{value} "
    if isinstance(value, list):
        return "".join(text_of(item) for item in value)
    if isinstance(value, dict):
        # role first: two turns that differ only in who spoke are different prompts
        return "\x1e" + str(value.get("role", "")) + "\x1f" + text_of(value.get("content", value.get("text", "")))
    return ""


def route_hint(body: bytes, n_parallel: int, n_slots: int) -> tuple[RouteHint, bytes]:
    """The hint for a JSON request body, and the body to forward (its id_slot made the replica's)."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return RouteHint(), body  # the replica answers the parse error, as the single server does
    if not isinstance(data, dict):
        return RouteHint(), body
    text = "".join(text_of(data[f]) for f in PROMPT_FIELDS if f in data)
    id_slot = data.get("id_slot")
    if not isinstance(id_slot, int) or isinstance(id_slot, bool) or id_slot < 0:
        return RouteHint(text=text), body
    if id_slot >= n_slots:
        raise invalid(f"Invalid id_slot {id_slot}: this cluster has {n_slots} slots (0..{n_slots - 1})")
    data["id_slot"] = id_slot % n_parallel
    return RouteHint(text=text, rank=id_slot // n_parallel), json.dumps(data).encode()


def slot_path(raw_id: str, n_parallel: int, n_slots: int) -> tuple[int, str]:
    """POST /slots/{id}: the replica that owns cluster slot `id`, and the path to send it."""
    try:
        id_slot = int(raw_id)
    except ValueError:
        raise invalid(f"Invalid slot ID '{raw_id}': expected an integer between 0 and {n_slots - 1}") from None
    if not 0 <= id_slot < n_slots:
        raise invalid(f"Invalid slot ID {id_slot}: this cluster has {n_slots} slots (0..{n_slots - 1})")
    return id_slot // n_parallel, f"/slots/{id_slot % n_parallel}"


# a slot id in a JSON answer or event; a key never occurs unescaped inside a JSON string, so generated text
# cannot match. Negative ids (-1: none yet) are left alone.
_ID_SLOT = re.compile(rb'("id_slot":\s*)(\d+)')


def offset_slot_ids(chunk: bytes, offset: int) -> bytes:
    """A replica's answer with its local slot ids turned into cluster ids (local + rank * n_parallel)."""
    if not offset or b'"id_slot"' not in chunk:
        return chunk
    return _ID_SLOT.sub(lambda m: m.group(1) + str(int(m.group(2)) + offset).encode(), chunk)

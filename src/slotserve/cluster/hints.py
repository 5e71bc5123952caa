"""What the front reads in a request body to route it: the prompt text (for the prefix index) and a cluster
slot id (id_slot: replica r, local slot s is r * n_parallel + s), which it turns into the replica's own."""
from __future__ import annotations

import json

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

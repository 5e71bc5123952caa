"""One module per API dialect, and the table the routes are made from. Adding an API shape is one module
and one row in DIALECTS. What a dialect module has (a module satisfies the Dialect protocol):

- PATHS, and its request Body (a pydantic model: its checks, and its /openapi.json description);
- parse(body, state) -> Generation: the request translated into engine requests, server defaults applied;
- Answer: writes the whole answer, the stream events (with its own per-answer State) and the stream's end;
- chat-style dialects also INPUT_TOKENS_PATHS and input_tokens_json(n): how long a request's prompt is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import anthropic, native, openai_chat, openai_completions, responses

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..schema import Generation
    from ..state import ApiState
    from .shared import Answer


class Dialect(Protocol):
    PATHS: tuple[str, ...]
    Body: type[BaseModel]
    Answer: type[Answer]

    def parse(self, body: dict, st: ApiState) -> Generation: ...


DIALECTS: tuple[Dialect, ...] = (native, openai_completions, openai_chat, anthropic, responses)

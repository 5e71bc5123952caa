"""Reading a request's JSON and checking its fields: the one family of validators every request schema uses.

Every refusal is a 400 in one style, "field '<name>' <what is wrong>", so a client can fix the request.
Coercions are llama-server's: 8.0 is 8 (JavaScript clients send it), null is the field left out.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Callable, TypeVar

from pydantic import BeforeValidator
from starlette.requests import Request

from .errors import ApiError, invalid
from .offload import INLINE_BYTES, off_loop

T = TypeVar("T")

INT32_MAX = 2**31 - 1
INT32_MIN = -INT32_MAX - 1


def field_error(name: str, what: str) -> ApiError:
    return invalid(f"field '{name}' {what}")


def json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- the body ----------------------------------------------------------------------------------------

class _NonFinite:
    """What a NaN / Infinity literal parses to: JSON has no such numbers and llama-server refuses the body."""


_NON_FINITE = _NonFinite()


def _non_finite_path(body) -> str | None:
    """Where the first NaN / Infinity literal sits, as 'a.b[2]'; None when there is none."""
    stack = [("", body)]
    while stack:
        path, v = stack.pop()
        if v is _NON_FINITE:
            return path
        if isinstance(v, dict):
            stack.extend((f"{path}.{k}" if path else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


async def read_body(request: Request) -> bytearray:
    """The body's bytes, gathered in one buffer (Starlette's body() keeps the chunks and a joined copy: twice the
    memory). Gate's body limit stops it past --max-body-mb."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
    return raw


def _shared_numbers() -> dict:
    """json.loads hooks for a big body. Two reasons: the C decoder holds the GIL for all of a 50 MB array of
    numbers (seconds, with the event loop stopped), but a Python hook per number lets it go every 5 ms; and
    equal numbers share one object, so 10 M token ids cost a list of pointers, not 10 M ints (~4x the body)."""
    seen: dict[str, int | float] = {}

    def shared(convert):
        def parse(text: str):
            v = seen.get(text)
            if v is None:
                v = convert(text)
                if len(seen) < 65536:  # a token id vocabulary's worth; past that, numbers are not shared
                    seen[text] = v
            return v
        return parse
    return {"parse_int": shared(int), "parse_float": shared(float)}


def decode_json(raw: bytes | bytearray, *, required: bool = True) -> dict:
    """The body as a JSON object; a 400 naming what is wrong otherwise."""
    if not raw.strip():
        if required:
            raise invalid("request body is empty: expected a JSON object")
        return {}
    seen_non_finite = False

    def non_finite(_):
        nonlocal seen_non_finite
        seen_non_finite = True
        return _NON_FINITE

    numbers = _shared_numbers() if len(raw) > INLINE_BYTES else {}
    try:
        body = json.loads(raw, parse_constant=non_finite, **numbers)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid("request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, not {json_type(body)}")
    if seen_non_finite:  # only then walk the body to name the field: a path per value would cost far more than it
        raise field_error(_non_finite_path(body), "is NaN or Infinity, which JSON does not allow (use a finite number)")
    return body


async def parse_body(request: Request, parse: Callable[[dict], T], *, required: bool = True) -> T:
    """parse(the JSON body): inline for a small body, on a worker thread for a big one (api/offload.py), so that
    decoding, checking and tokenizing a huge prompt never stops the event loop."""
    raw = await read_body(request)

    def work() -> T:
        body = decode_json(raw, required=required)
        raw.clear()  # the bytes are spent: free them before the body is expanded further (rendered, tokenized)
        return parse(body)
    return await off_loop(len(raw), work)


async def read_json(request: Request, *, required: bool = True) -> dict:
    return await parse_body(request, lambda body: body, required=required)


# ---- values --------------------------------------------------------------------------------------------

def as_int(name: str, v, lo: int | None = INT32_MIN, hi: int | None = INT32_MAX) -> int:
    """An integer in [lo, hi] (None: no bound there)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # JavaScript clients send 8.0
    if isinstance(v, bool) or not isinstance(v, int):
        raise field_error(name, f"must be an integer, got {v}" if is_number(v) else
                                f"must be an integer, not {json_type(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise field_error(name, f"must be between {lo} and {hi}, got {v}")
    return v


def as_num(name: str, v) -> float:
    try:
        x = float(v) if is_number(v) else math.nan
    except OverflowError:  # a 400-digit integer
        x = math.nan
    if not math.isfinite(x):
        raise field_error(name, f"must be a finite number, not {json_type(v)}")
    return x


def as_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise field_error(name, f"must be a boolean, not {json_type(v)}")
    return v


def as_seconds(name: str, v) -> float:
    """A duration (llama-server takes whole seconds; fractions are allowed here)."""
    if not is_number(v) or v != v:
        raise field_error(name, f"must be a number of seconds (-1 to disable), not {json_type(v)}")
    return float(v)


def as_stop(name: str, v) -> list[str]:
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s]
    raise field_error(name, "must be a string or an array of strings")


def as_strings(name: str, v) -> list[str]:
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return v
    raise field_error(name, "must be an array of strings")


def as_object(name: str, v) -> dict:
    if not isinstance(v, dict):
        raise field_error(name, "must be an object")
    return v


# ---- the same checks as pydantic field types -------------------------------------------------------------

def _by_name(check, **kw):
    return BeforeValidator(lambda v, info: check(info.field_name, v, **kw))


def Int(lo: int = INT32_MIN, hi: int = INT32_MAX):  # noqa: N802  (a type, as pydantic's conint)
    return Annotated[int | None, _by_name(as_int, lo=lo, hi=hi)]


Num = Annotated[float | None, _by_name(as_num)]
Bool = Annotated[bool | None, _by_name(as_bool)]
Seconds = Annotated[float | None, _by_name(as_seconds)]
Stop = Annotated[list[str] | None, _by_name(as_stop)]
Strings = Annotated[list[str] | None, _by_name(as_strings)]
Object = Annotated[dict[str, Any] | None, _by_name(as_object)]


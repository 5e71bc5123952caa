"""Reading a request's JSON and checking its fields: the one family of validators every request schema uses.

Every refusal is a 400 in one style, "field '<name>' <what is wrong>", so a client can fix the request.
Coercions are llama-server's: 8.0 is 8 (JavaScript clients send it), null is the field left out.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import BeforeValidator
from starlette.requests import Request

from .errors import ApiError, invalid

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


async def read_json(request: Request, *, required: bool = True) -> dict:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise invalid("request body is empty: expected a JSON object")
        return {}
    try:
        body = json.loads(raw, parse_constant=lambda _: _NON_FINITE)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid("request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, not {json_type(body)}")
    where = _non_finite_path(body)
    if where is not None:
        raise field_error(where, "is NaN or Infinity, which JSON does not allow (use a finite number)")
    return body


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


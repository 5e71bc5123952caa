"""Request bodies -> engine requests, with llama-server's field names, aliases and prompt rules.

Every rejection names the field, so a client can fix the request; nothing here touches the engine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from starlette.requests import Request

from ..engine.tasks import CompletionRequest
from ..model.sampling import SamplingParams, params_from_request
from ..model.tokenizer import Tokenizer
from .errors import invalid

INT32_MAX = 2**31 - 1

# Samplers llama-server has and slotserve does not: a request that turns one on would silently get
# different text, so it is refused instead. Each maps to the value that means "off".
_UNSUPPORTED_ACTIVE = {
    "mirostat": lambda v: v == 0,
    "dry_multiplier": lambda v: v <= 0,
    "xtc_probability": lambda v: v <= 0,
    "dynatemp_range": lambda v: v <= 0,
    "top_n_sigma": lambda v: v <= 0,
    "adaptive_target": lambda v: v < 0,
}


async def read_json(request: Request, *, required: bool = True) -> dict:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise invalid("request body is empty: expected a JSON object")
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid("request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def _present(body: dict, *names: str):
    """(name, value) of the first of `names` present and not null: llama-server treats null as absent."""
    for name in names:
        if body.get(name) is not None:
            return name, body[name]
    return None, None


def as_int(name: str, v, lo: int = -INT32_MAX - 1, hi: int = INT32_MAX) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # JavaScript clients send 8.0
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(f"field '{name}' must be an integer, not {_json_type(v)}")
    if not lo <= v <= hi:
        raise invalid(f"field '{name}' must be between {lo} and {hi}, got {v}")
    return v


def get_int(body: dict, *names: str, default: int, lo: int = -INT32_MAX - 1, hi: int = INT32_MAX) -> int:
    name, v = _present(body, *names)
    return default if name is None else as_int(name, v, lo, hi)


def get_bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"field '{name}' must be a boolean, not {_json_type(v)}")
    return v


def get_stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s]
    raise invalid("field 'stop' must be a string or an array of strings")


# ---- prompts ----------------------------------------------------------------------------------------

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _token_id(tok: Tokenizer, where: str, v) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(f"'{where}' must be an integer token id")
    if not 0 <= v < tok.n_vocab:
        raise invalid(f"'{where}': token id {v} is out of range for a vocabulary of {tok.n_vocab} tokens")
    return v


def token_ids(tok: Tokenizer, v, where: str) -> list[int]:
    if not isinstance(v, list):
        raise invalid(f"field '{where}' must be an array of token ids")
    return [_token_id(tok, f"{where}[{i}]", x) for i, x in enumerate(v)]


def _tokenize(tok: Tokenizer, text: str, add_special: bool, parse_special: bool, where: str) -> list[int]:
    try:
        return tok.tokenize(text, add_special=add_special, parse_special=parse_special)
    except (ValueError, UnicodeError) as exc:
        raise invalid(f"cannot tokenize '{where}': {exc}") from None


def tokenize_mixed(tok: Tokenizer, p, where: str, add_special: bool, *, parse_special: bool = True) -> list[int]:
    """One prompt: a string, or a list of token ids and strings. As llama-server, BOS is added only
    when the prompt starts with a string, and later strings never get one."""
    if isinstance(p, str):
        return _tokenize(tok, p, add_special, parse_special, where)
    if not isinstance(p, list):
        raise invalid(f"'{where}' must be a string, a list of token ids, a list mixing strings and token ids, "
                      "or an object with 'prompt_string'")
    out: list[int] = []
    for i, el in enumerate(p):
        if isinstance(el, str):
            out += _tokenize(tok, el, add_special and i == 0, parse_special, f"{where}[{i}]")
        else:
            out.append(_token_id(tok, f"{where}[{i}]", el))
    return out


def _one_prompt(tok: Tokenizer, p, where: str) -> list[int]:
    if isinstance(p, dict):
        if p.get("multimodal_data") is not None:
            raise invalid(f"'{where}': multimodal data provided, but this model does not support multimodal requests")
        if "prompt_string" not in p:
            raise invalid(f"'{where}' is an object without 'prompt_string'")
        return tokenize_mixed(tok, p["prompt_string"], f"{where}.prompt_string", True)
    return tokenize_mixed(tok, p, where, True)


def tokenize_prompts(tok: Tokenizer, prompt) -> list[list[int]]:
    """llama-server's rule: a list holding no number is several prompts; anything else is one."""
    if prompt is None:
        raise invalid("'prompt' is required")
    if isinstance(prompt, list) and not any(_is_number(p) for p in prompt):
        if not prompt:
            raise invalid("'prompt' must not be empty")
        return [_one_prompt(tok, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    return [_one_prompt(tok, prompt, "prompt")]


# ---- generation parameters -------------------------------------------------------------------------

@dataclass
class Generation:
    """Everything a completion-style request asks for, already checked."""
    requests: list[CompletionRequest]  # one per prompt x n_cmpl, in answer order
    stream: bool = False
    return_tokens: bool = False
    include_usage: bool = False
    response_fields: list[str] = field(default_factory=list)
    verbose: bool | None = None  # "__verbose" in OpenAI-style answers; None: the server's --verbose decides
    sse_ping_interval: float | None = None  # seconds of stream silence before a ping; None: the server's


def _check_supported(body: dict) -> None:
    for name, is_off in _UNSUPPORTED_ACTIVE.items():
        v = body.get(name)
        if v is not None and _is_number(v) and not is_off(v):
            raise invalid(f"field '{name}': this sampler is not supported by slotserve; leave it unset "
                          "(or at its disabled value)")
    for name in ("grammar", "json_schema"):
        v = body.get(name)
        if v not in (None, "", {}):
            raise invalid(f"field '{name}': grammar-constrained sampling is not supported by slotserve")
    if body.get("lora") not in (None, []):
        raise invalid("field 'lora': LoRA adapters are not supported by slotserve")


def parse_generation(body: dict, prompts: list[list[int]], *, tok: Tokenizer, defaults: SamplingParams,
                     n_predict_default: int, n_parallel: int) -> Generation:
    """Read llama-server's completion fields (the OpenAI names are aliases) into engine requests."""
    _check_supported(body)
    try:
        sampling = params_from_request(body, defaults, tokenize=lambda s: tok.tokenize(s, False, False))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    n_predict = get_int(body, "n_predict", "max_completion_tokens", "max_tokens", default=n_predict_default,
                        lo=-1)
    id_slot = get_int(body, "id_slot", default=-1)
    if not -1 <= id_slot < n_parallel:
        raise invalid(f"field 'id_slot': slot {id_slot} does not exist; this server has {n_parallel} slots "
                      f"(0..{n_parallel - 1}), or use -1 for any idle slot")
    n_cmpl = get_int(body, "n_cmpl", "n", default=1, lo=1, hi=n_parallel)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise invalid("field 'stream_options' must be an object")
    fields = body.get("response_fields")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise invalid("field 'response_fields' must be an array of strings")
    base = CompletionRequest(
        prompt_tokens=[], sampling=sampling, n_predict=n_predict, stop=get_stop(body), id_slot=id_slot,
        cache_prompt=get_bool(body, "cache_prompt", True), n_probs=max(0, sampling.n_probs),
        stream=get_bool(body, "stream", False), n_keep=get_int(body, "n_keep", default=0, lo=-1),
        n_discard=get_int(body, "n_discard", default=0, lo=0),
        return_progress=get_bool(body, "return_progress", False),
        timings_per_token=get_bool(body, "timings_per_token", False))
    requests = [replace(base, prompt_tokens=list(p), stop=list(base.stop)) for p in prompts for _ in range(n_cmpl)]
    return Generation(
        requests=requests, stream=base.stream,
        return_tokens=get_bool(body, "return_tokens", False),
        include_usage=get_bool(stream_options or {}, "include_usage", False),
        response_fields=list(fields or []),
        verbose=get_bool(body, "verbose", None),
        sse_ping_interval=get_seconds(body, "sse_ping_interval"))


def get_seconds(body: dict, name: str) -> float | None:
    """A duration in seconds (llama-server takes whole ones; fractions are allowed here), or None."""
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise invalid(f"field '{name}' must be a number of seconds (-1 to disable), not {_json_type(v)}")
    return float(v)


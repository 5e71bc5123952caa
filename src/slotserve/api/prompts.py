"""Prompts as llama-server reads them: a string, token ids, a mix of both, or several prompts at once."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from ..model.tokenizer import Tokenizer
from .errors import ApiError
from .fields import field_error, is_number

# The most tokens one prompt may have (None: no bound), set per request around its parsing (prompt_limit): every
# dialect tokenizes through this module, so a prompt that cannot fit a slot is refused here, before the slow
# pure-Python tokenizer has turned megabytes of text into tokens only for the engine to refuse them.
_LIMIT: ContextVar[int | None] = ContextVar("slotserve_prompt_limit", default=None)
_C_ISSPACE = " \t\n\v\f\r"  # the only characters a special token may swallow (LSTRIP/RSTRIP)


@contextmanager
def prompt_limit(n_tokens: int | None):
    """Within this block a prompt of n_tokens or more is refused with llama-server's exceed_context_size_error."""
    token = _LIMIT.set(n_tokens)
    try:
        yield
    finally:
        _LIMIT.reset(token)


@lru_cache(maxsize=8)
def _longest_token_text(tok: Tokenizer) -> int:
    return max(1, max(len(tok.token_text(i)) for i in range(tok.n_vocab)))


def min_tokens(tok: Tokenizer, text: str) -> int:
    """A lower bound on len(tok.tokenize(text, add_special=False)), found without tokenizing: a token covers no
    more characters of the text than its vocabulary entry is long (a SentencePiece entry has a character per
    character, "\u2581" for a space; a byte-level BPE one a character per byte, so at least one per character),
    and only whitespace can vanish into a neighbouring special token."""
    n_solid = len(text) - sum(text.count(c) for c in _C_ISSPACE)
    return -(-n_solid // _longest_token_text(tok))


def too_long(n_tokens: int, n_ctx: int, *, exact: bool) -> ApiError:
    """llama-server's answer to a prompt that cannot fit; "at least" when the count stopped early."""
    count = f"{n_tokens} tokens" if exact else f"at least {n_tokens} tokens"
    return ApiError("exceed_context_size", f"request ({count}) exceeds the available context size ({n_ctx} tokens), "
                                           "try increasing it", n_prompt_tokens=n_tokens, n_ctx=n_ctx)


def _check_fits(n_at_least: int) -> None:
    limit = _LIMIT.get()
    if limit is not None and n_at_least >= limit:
        raise too_long(n_at_least, limit, exact=False)


def token_id(tok: Tokenizer, where: str, v) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise field_error(where, "must be an integer token id")
    if not 0 <= v < tok.n_vocab:
        raise field_error(where, f"holds token id {v}, out of range for a vocabulary of {tok.n_vocab} tokens")
    return v


def token_ids(tok: Tokenizer, v, where: str) -> list[int]:
    if not isinstance(v, list):
        raise field_error(where, "must be an array of token ids")
    return [token_id(tok, f"{where}[{i}]", x) for i, x in enumerate(v)]


def _tokenize(tok: Tokenizer, text: str, add_special: bool, parse_special: bool, where: str) -> list[int]:
    try:
        return tok.tokenize(text, add_special=add_special, parse_special=parse_special)
    except (ValueError, UnicodeError) as exc:
        raise field_error(where, f"cannot be tokenized: {exc}") from None


def tokenize_mixed(tok: Tokenizer, p, where: str, add_special: bool, *, parse_special: bool = True) -> list[int]:
    """One prompt: a string, or a list of token ids and strings. As llama-server, BOS is added only
    when the prompt starts with a string, and later strings never get one."""
    if isinstance(p, str):
        _check_fits(min_tokens(tok, p))
        return _tokenize(tok, p, add_special, parse_special, where)
    if not isinstance(p, list):
        raise field_error(where, "must be a string, a list of token ids, a list mixing strings and token ids, "
                                 "or an object with 'prompt_string'")
    out: list[int] = []
    for i, el in enumerate(p):
        if isinstance(el, str):
            _check_fits(len(out) + min_tokens(tok, el))
            out += _tokenize(tok, el, add_special and i == 0, parse_special, f"{where}[{i}]")
        else:
            _check_fits(len(out) + 1)
            out.append(token_id(tok, f"{where}[{i}]", el))
    return out


def _one_prompt(tok: Tokenizer, p, where: str) -> list[int]:
    if isinstance(p, dict):
        if p.get("multimodal_data") is not None:
            raise field_error(where, "holds multimodal data, but this model does not support multimodal requests")
        if "prompt_string" not in p:
            raise field_error(where, "is an object without 'prompt_string'")
        return tokenize_mixed(tok, p["prompt_string"], f"{where}.prompt_string", True)
    return tokenize_mixed(tok, p, where, True)


def tokenize_prompts(tok: Tokenizer, prompt) -> list[list[int]]:
    """llama-server's rule: a list holding no number is several prompts; anything else is one."""
    if prompt is None:
        raise field_error("prompt", "is required")
    if isinstance(prompt, list) and not any(is_number(p) for p in prompt):
        if not prompt:
            raise field_error("prompt", "must not be empty")
        return [_one_prompt(tok, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    return [_one_prompt(tok, prompt, "prompt")]

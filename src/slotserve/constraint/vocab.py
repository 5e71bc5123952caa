"""The model's vocabulary as llguidance sees it: one byte string per token id, built once per model.

llguidance matches grammars on bytes, so all it needs is what each token spells. The spelling is the
token's plain piece (SentencePiece's "▁" already a space, `<0x0A>` already the byte 10); control and
unknown tokens, which render as nothing in plain text, are spelled 0xFF + their text, llguidance's
marker for special tokens a grammar can only name explicitly (`<|tool_call|>`, `<[42]>`). This is what
llama.cpp's own llguidance backend hands it (common/llguidance.cpp), so grammars behave the same.
"""
from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

import llguidance
import numpy as np

SPECIAL_MARKER = b"\xff"  # llguidance's TokTrie::SPECIAL_TOKEN_MARKER: not valid UTF-8, never a real piece
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte-fallback tokens
_MAX_GREEDY = 64  # longest piece the greedy tokenizer tries; longer vocabulary entries are never needed for bytes


class VocabSource(Protocol):
    """What a slotserve tokenizer offers (the SPM one now, a byte-level BPE one later)."""
    n_vocab: int
    bos_id: int | None

    @property
    def eog_ids(self) -> tuple[int, ...]: ...
    def token_to_piece(self, token: int, special: bool = True) -> bytes: ...
    # optional: token_text(token) -> str, the vocabulary entry, to tell byte-fallback tokens apart
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]: ...


class _Wrapper:
    """The duck-typed object LLTokenizer reads (llguidance's TokenizerWrapper interface)."""
    is_tokenizer_wrapper = True

    def __init__(self, tokens: list[bytes], eos: int, bos: int | None, encode: Callable[[str], list[int]]):
        self.tokens, self.eos_token_id, self.bos_token_id = tokens, eos, bos
        self.special_token_ids: list[int] = []  # the 0xFF prefix already says which tokens are special
        self._encode = encode

    def __call__(self, text: str | bytes) -> list[int]:
        return self._encode(text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text)


class GrammarVocab:
    """One model's LLTokenizer (about 0.1 s to build for 32000 tokens: build it once, at model load)."""

    def __init__(self, token_bytes: Sequence[bytes], eog_ids: Sequence[int], *, bos_id: int | None = None,
                 tokenize: Callable[[str], list[int]] | None = None, n_vocab: int | None = None):
        """token_bytes[i]: what token i spells, special ones prefixed with SPECIAL_MARKER.
        tokenize(text): ids without BOS whose spelling is text exactly, or None to use greedy matching.
        n_vocab: the model's logits width when its output is padded past the vocabulary."""
        if not eog_ids:
            raise ValueError("a grammar needs an end-of-generation token to finish on")
        self.token_bytes = list(token_bytes)
        self.n_vocab = max(n_vocab or 0, len(self.token_bytes))
        self.token_bytes += [b""] * (self.n_vocab - len(self.token_bytes))  # padding ids are never allowed
        self.eog_ids = tuple(sorted(set(eog_ids)))
        self._by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(self.token_bytes):
            if b and not b.startswith(SPECIAL_MARKER):
                self._by_bytes.setdefault(b, i)  # the lowest id among duplicates, e.g. "a" before "<0x61>"
        self._tokenize = tokenize
        wrapper = _Wrapper(self.token_bytes, self.eog_ids[0], bos_id, self._exact_tokenize)
        self.lltokenizer = llguidance.LLTokenizer(wrapper, n_vocab=self.n_vocab, eos_token=list(self.eog_ids))
        self.n_words = (self.n_vocab + 31) // 32  # int32 words in one bitmask row

    @classmethod
    def from_tokenizer(cls, tokenizer: VocabSource, n_vocab: int | None = None) -> GrammarVocab:
        def spelling(i: int) -> bytes:
            plain = tokenizer.token_to_piece(i, special=False)
            if plain:
                return plain
            special = tokenizer.token_to_piece(i, special=True)
            return SPECIAL_MARKER + special if special else b""

        def tokenize(text: str) -> list[int]:
            # as llama.cpp's llguidance tokenize callback: no BOS, special-token texts parsed
            return tokenizer.tokenize(text, add_special=False, parse_special=True)

        spellings = [spelling(i) for i in range(tokenizer.n_vocab)]
        # llguidance's token trie holds one token per spelling, so of "a" and <0x61> only one could ever be
        # allowed. Keep the piece the model writes; a byte-fallback token stays usable only for bytes no
        # piece spells (<0x0A>, the bytes of rare characters) and is otherwise a named special token.
        text = getattr(tokenizer, "token_text", None)
        if text is not None:
            pieces = {b for i, b in enumerate(spellings) if not _BYTE_TOKEN.fullmatch(text(i))}
            for i, b in enumerate(spellings):
                if b in pieces and _BYTE_TOKEN.fullmatch(text(i)):
                    spellings[i] = SPECIAL_MARKER + text(i).encode()
        return cls(spellings, tokenizer.eog_ids, bos_id=tokenizer.bos_id, tokenize=tokenize, n_vocab=n_vocab)

    def spelled(self, tokens: Sequence[int]) -> bytes:
        """The bytes a token list spells (special tokens with their marker)."""
        return b"".join(self.token_bytes[t] for t in tokens)

    def _exact_tokenize(self, text: str) -> list[int]:
        """llguidance re-tokenizes forced text and needs ids that spell it exactly. An SPM tokenizer adds
        a leading "▁" to the text (and after each special token), so when its answer spells something
        else, fall back to greedy longest-match, which is exact though not canonical."""
        data = text.encode("utf-8", "surrogateescape")
        if self._tokenize is not None:
            # text with a leading space is what SPM makes of the text without it: canonical ids then
            for candidate in (text, text[1:]) if text.startswith(" ") else (text,):
                ids = self._tokenize(candidate)
                if all(0 <= t < self.n_vocab for t in ids) and self.spelled(ids) == data:
                    return ids
        return self.greedy(data)

    def tokenize_word(self, text: str) -> list[int]:
        """A trigger word as llama-server tokenizes it (no BOS, special-token texts parsed): one id for a
        special token such as <tool_call>."""
        return self._tokenize(text) if self._tokenize is not None else self.greedy(text.encode())

    def greedy(self, data: bytes) -> list[int]:
        out, i, by_bytes = [], 0, self._by_bytes
        while i < len(data):
            for n in range(min(_MAX_GREEDY, len(data) - i), 0, -1):
                tid = by_bytes.get(data[i:i + n])
                if tid is not None:
                    out.append(tid)
                    i += n
                    break
            else:
                raise ValueError(f"the vocabulary cannot spell byte 0x{data[i]:02X}")
        return out

    def allowed_from_bitmask(self, row: np.ndarray) -> np.ndarray:
        """One int32 bitmask row (bit i of word i//32 = token i allowed) as a bool array of n_vocab."""
        return np.unpackbits(row.view(np.uint8), bitorder="little", count=self.n_vocab).view(bool)

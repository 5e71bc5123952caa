"""The tokenizer of a GGUF file: the vocabulary type named by `tokenizer.ggml.model` behind one interface.

`Tokenizer` (tokenizer_base) is what the rest of slotserve uses: tokenize, detokenize, token_to_piece,
is_eog / eog_ids, is_control, token_text, n_vocab, bos_id / eos_id, add_bos / add_eos. The vocabulary types:
- "llama": SentencePiece-style merges by score (tokenizer_spm.SpmTokenizer) — LLaMA 1/2, TinyLlama, Mistral v1;
- "gpt2": byte-level BPE merges by rank (tokenizer_bpe.BpeTokenizer) — LLaMA 3, SmolLM, Qwen 2, GPT-2, ...
The others llama.cpp knows (WordPiece, Unigram, RWKV, ...) are refused with a message saying so.
"""
from __future__ import annotations

from typing import Any, Mapping

from .tokenizer_base import (ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP,  # noqa: F401
                             ATTR_UNDEFINED, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_USER_DEFINED, Tokenizer)
from .tokenizer_bpe import BpeTokenizer
from .tokenizer_spm import SpmTokenizer

VOCAB_TYPES = {"llama": SpmTokenizer, "gpt2": BpeTokenizer}

__all__ = ["Tokenizer", "SpmTokenizer", "BpeTokenizer", "load_tokenizer", "VOCAB_TYPES"]


def load_tokenizer(meta: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF file's metadata (GGUFFile.metadata) describes."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError("GGUF file has no tokenizer.ggml.model: it carries no vocabulary")
    if model not in VOCAB_TYPES:
        raise ValueError(f"tokenizer model {model!r} is not supported: slotserve implements the SentencePiece "
                         f"('llama') and byte-level BPE ('gpt2') tokenizers")
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError("GGUF file has no tokenizer.ggml.tokens")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type")
    if types is not None and len(types) < len(tokens):
        raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    return VOCAB_TYPES[model].from_metadata(meta, tokens, types)

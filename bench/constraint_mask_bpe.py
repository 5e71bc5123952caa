"""Mask cost on a 128,256-token byte-level BPE vocabulary (LLaMA-3's), before slotserve can tokenize it.

    python bench/constraint_mask_bpe.py

The token bytes come straight from the GGUF (GPT-2's byte-to-unicode spelling undone), control tokens
become special tokens, as GrammarVocab takes any vocabulary. Then a walk through a JSON schema, choosing
a random allowed token each step, timing the mask and its application to a logits row. No forward pass:
only the grammar side is measured. Not a test.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "src"), str(BENCH)]

from constraint_cost import SCHEMA  # noqa: E402
from slotserve.constraint import Constraint, ConstraintMasks, GrammarVocab, from_json_schema  # noqa: E402
from slotserve.constraint.vocab import SPECIAL_MARKER  # noqa: E402
from slotserve.model.gguf_file import GGUFFile  # noqa: E402

MODEL = BENCH.parent.parent / "shared" / "models" / "synth-bpe-8M-f16.gguf"
CONTROL = 3  # llama_token_type


def byte_decoder() -> dict[str, int]:
    """GPT-2's table: printable bytes spell themselves, the others are shifted to code points from 256."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def main() -> None:
    meta = GGUFFile(MODEL).metadata
    texts = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    eos = meta["tokenizer.ggml.eos_token_id"]
    dec = byte_decoder()
    spell = [SPECIAL_MARKER + t.encode() if ty == CONTROL else bytes(dec[c] for c in t)
             for t, ty in zip(texts, types)]
    t0 = time.perf_counter()
    vocab = GrammarVocab(spell, eog_ids=[eos, texts.index("<|eot_id|>")])
    print(f"{MODEL.name}: {vocab.n_vocab} tokens; vocabulary for llguidance {(time.perf_counter() - t0) * 1e3:.0f} ms")
    compile_s, mask_s, apply_s = [], [], []
    rng = np.random.default_rng(0)
    masks = ConstraintMasks(vocab)
    logits = np.zeros(vocab.n_vocab, np.float32)
    for _ in range(10):
        t0 = time.perf_counter()
        c = Constraint(from_json_schema(SCHEMA), vocab)
        compile_s.append(time.perf_counter() - t0)
        for _ in range(200):
            t0 = time.perf_counter()
            row = masks.compute([c])[0]
            t1 = time.perf_counter()
            masks.apply(logits, row)
            apply_s.append(time.perf_counter() - t1)
            mask_s.append(t1 - t0)
            allowed = np.flatnonzero(vocab.allowed_from_bitmask(row))
            token = int(rng.choice(allowed))
            if token in vocab.eog_ids or c.is_stopped():
                break
            c.accept(token)
    masks.close()
    med = lambda xs: f"median {statistics.median(xs) * 1e3:.3f} ms, mean {statistics.fmean(xs) * 1e3:.3f} ms"  # noqa: E731
    print(f"- JSON schema -> matcher: {med(compile_s)}")
    print(f"- mask, {len(mask_s)} steps of random allowed tokens: {med(mask_s)}")
    print(f"- applying it to a logits row: {med(apply_s)}")


if __name__ == "__main__":
    main()

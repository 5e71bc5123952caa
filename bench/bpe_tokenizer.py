"""The byte-level BPE tokenizer against llama-server's /tokenize and Hugging Face `tokenizers`.

    python bench/bpe_tokenizer.py [--vocab GGUF] [--model GGUF] [--fuzz N] [--seed S]

1. Speed on ~100 KB of text (this repository's README and Python sources: prose and code), as tokens per
   second: ours with an empty word cache and again warm; `tokenizers` (if installed) built from the same
   GGUF vocabulary and merges with llama.cpp's pre-tokenizer expression; llama-server's /tokenize (if the
   binary is at ~/.cache/slotserve-ref/bin/llama-server), request included; and whether each one's ids
   equal llama-server's.
2. A randomized comparison: N strings mixing words, contractions, digit runs, whitespace of every kind,
   scripts with combining marks, emoji, control characters, random code points and special-token texts,
   sent to llama-server's /tokenize (add_special and parse_special varied, with_pieces on) and compared id
   for id and piece for piece with ours. Prints the count and every mismatch.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests" / "api")]

from server import ServerProcess  # noqa: E402  (tests/api/server.py: a process on a free loopback port)

from slotserve.model.gguf_file import GGUFFile  # noqa: E402
from slotserve.model.tokenizer import BpeTokenizer, Tokenizer  # noqa: E402

LLAMA_SERVER = Path.home() / ".cache/slotserve-ref/bin/llama-server"
SHARED = REPO.parent / "shared"


def sample_text(size: int = 100_000) -> str:
    parts = [(REPO / "README.md").read_text("utf-8")]
    parts += [p.read_text("utf-8") for p in sorted((REPO / "src").rglob("*.py"))]
    return "\n".join(parts)[:size]


def hf_tokenizer(reader: GGUFFile, tok: BpeTokenizer):
    """`tokenizers` over the GGUF's vocabulary and merges, with llama.cpp's expressions as Split steps."""
    try:
        from tokenizers import Regex
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers
    except ImportError:
        return None
    merges = []
    for m in reader.metadata["tokenizer.ggml.merges"]:
        cut = m.find(" ", 1)
        merges.append((m[:cut], m[cut + 1:]))
    vocab = {t: i for i, t in enumerate(reader.metadata["tokenizer.ggml.tokens"])}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=tok.pre.ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(e), behavior="isolated") for e in tok.pre.exprs]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def speed(tok: BpeTokenizer, hf, srv: ServerProcess | None) -> None:
    text = sample_text()
    ref = None
    if srv is not None:
        t_ref, ref = timed(lambda: srv.post("/tokenize", {"content": text, "add_special": False,
                                                           "parse_special": False}).json()["tokens"])
    tok._words.clear()
    t0 = time.perf_counter()
    ours = tok.tokenize(text, add_special=False)
    t_cold = time.perf_counter() - t0
    t_warm, _ = timed(lambda: tok.tokenize(text, add_special=False))
    n = len(ours)
    print(f"text: {len(text.encode())} bytes, {n} tokens")
    print(f"  slotserve (cold word cache)  {n / t_cold:>12,.0f} tokens/s  ({t_cold * 1e3:.0f} ms)"
          + ("" if ref is None else f"  equal to llama-server: {ours == ref}"))
    print(f"  slotserve (warm word cache)  {n / t_warm:>12,.0f} tokens/s  ({t_warm * 1e3:.0f} ms)")
    if hf is not None:
        t_hf, hf_ids = timed(lambda: hf.encode(text, add_special_tokens=False).ids)
        print(f"  tokenizers (HF, Rust)        {n / t_hf:>12,.0f} tokens/s  ({t_hf * 1e3:.0f} ms)"
              + ("" if ref is None else f"  equal to llama-server: {hf_ids == ref}"))
    if ref is not None:
        print(f"  llama-server /tokenize       {n / t_ref:>12,.0f} tokens/s  ({t_ref * 1e3:.0f} ms, HTTP included)")


_WORDS = ["the", "The", "HELLO", "world", "don't", "I'm", "you'LL", "they're", "we've", "it'S", "O'Neil", "naïve",
          "café", "Straße", "Ελληνικά", "русский", "日本語", "中文字符", "한국어", "العربية", "हिन्दी", "ภาษาไทย",
          "e\u0301", "Z\u0351\u0362a\u0338lgo", "🦙", "👩‍👩‍👧", "🇫🇷", "1", "12", "123", "1234567", "٣٤٥", "Ⅻ", "½"]
_SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000", "\u2009", "\v", "\f", "\x85"]
_PUNCT = list(".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + ["...", "--", "->", "'s", "'", "''", "“", "”", "…", "€", "©"]


def random_text(rng: random.Random, specials: list[str]) -> str:
    out = []
    for _ in range(rng.randint(1, 24)):
        kind = rng.random()
        if kind < 0.3:
            out.append(rng.choice(_WORDS))
        elif kind < 0.5:
            out.append(rng.choice(_SPACES))
        elif kind < 0.65:
            out.append(rng.choice(_PUNCT))
        elif kind < 0.75:
            out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
        elif kind < 0.85:  # any code point but surrogates (JSON cannot carry a lone one)
            cp = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF), rng.randint(0x10000, 0x10FFFF)])
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
        elif kind < 0.9:
            out.append(rng.choice(specials))
        else:
            out.append("".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 12))))
    return "".join(out)


def fuzz(tok: BpeTokenizer, srv: ServerProcess, n: int, seed: int) -> None:
    rng = random.Random(seed)
    specials = [tok.token_text(i) for i in tok.eog_ids] + [tok.token_text(tok.bos_id), "<|start_header_id|>",
                                                           "<|reserved_special_token_3|>", "<|", "|>"]
    mismatches = 0
    for i in range(n):
        text = random_text(rng, specials)
        add_special, parse_special = rng.random() < 0.3, rng.random() < 0.7
        res = srv.post("/tokenize", {"content": text, "add_special": add_special, "parse_special": parse_special,
                                     "with_pieces": True}).json()["tokens"]
        ref_ids = [t["id"] for t in res]
        ours = tok.tokenize(text, add_special=add_special, parse_special=parse_special)
        ref_pieces = [t["piece"] for t in res]
        our_pieces = []
        for t in ours:
            raw = tok.token_to_piece(t, special=True)
            try:
                our_pieces.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                our_pieces.append(list(raw))
        if ours != ref_ids or our_pieces != ref_pieces:
            mismatches += 1
            print(f"MISMATCH {text!r} add_special={add_special} parse_special={parse_special}\n"
                  f"  llama-server {ref_ids}\n  slotserve    {ours}")
    print(f"randomized comparison: {n} strings, {mismatches} mismatches (seed {seed})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", default=str(SHARED / "vocab" / "ggml-vocab-llama-bpe.gguf"))
    ap.add_argument("--model", default=str(SHARED / "models" / "synth-bpe-8M-f16.gguf"),
                    help="a model llama-server can load with the same vocabulary")
    ap.add_argument("--fuzz", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    reader = GGUFFile(args.vocab)
    tok = Tokenizer.from_gguf(reader)
    assert isinstance(tok, BpeTokenizer), "a BPE vocabulary, please"
    hf = hf_tokenizer(reader, tok)
    if not LLAMA_SERVER.is_file():
        print(f"no {LLAMA_SERVER}: speed only, no comparison")
        speed(tok, hf, None)
        return
    with ServerProcess(args.model, "-c", "256", "-np", "1", binary=str(LLAMA_SERVER)) as srv:
        speed(tok, hf, srv)
        if args.fuzz:
            fuzz(tok, srv, args.fuzz, args.seed)


if __name__ == "__main__":
    main()

"""The SPM tokenizer against llama.cpp's own test vectors and llama-server's recorded prompts.

Expected values marked "libllama" were recorded from llama.cpp 11434's llama_tokenize /
llama_detokenize / llama_token_to_piece on the same vocab file.
"""
import json
from functools import cache

import pytest
from slotserve.model.gguf_file import GGUFFile

from conftest import shared_file  # tests/conftest.py: rootdir conftest, its directory is on sys.path
from slotserve.model.tokenizer import Tokenizer

GOLDEN = ["stories260K.json", "synth-spm-19M-f16.json", "synth-spm-19M-q8_0.json",
          "synth-spm-19M-q4_0.json", "synth-spm-19M-q4_k_m.json"]
SEP = "\n__ggml_vocab_test__\n"


@cache
def _load(*parts: str) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(shared_file(*parts)))


def spm() -> Tokenizer:
    return _load("vocab", "ggml-vocab-llama-spm.gguf")


def vocab_cases() -> list[tuple[str, list[int]]]:
    # split exactly as test-tokenizer-0.cpp: raw bytes, "\n__ggml_vocab_test__\n" separators
    raw = shared_file("vocab", "ggml-vocab-llama-spm.gguf.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEP)
    if raw.endswith(SEP):
        texts.pop()
    lines = shared_file("vocab", "ggml-vocab-llama-spm.gguf.out").read_text("utf-8").splitlines()
    assert len(texts) == len(lines) == 46
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def golden(name: str) -> tuple[Tokenizer, list[dict]]:
    data = json.loads(shared_file("golden", name).read_text("utf-8"))
    return _load("models", data["meta"]["model"]), data["cases"]


# ---- llama.cpp's test vectors ---------------------------------------------------------------

def test_vocab_test_vectors():
    # test-tokenizer-0 calls common_tokenize(ctx, text, add_special=false, parse_special=false)
    tok = spm()
    failures = [(text, want, got) for text, want in vocab_cases()
                if (got := tok.tokenize(text, add_special=False, parse_special=False)) != want]
    assert failures == []


def test_vocab_texts_round_trip():
    tok = spm()
    for text, want in vocab_cases():
        assert tok.detokenize(want) == text


def test_every_token_round_trips():
    # test-tokenizer-1-spm: each piece, re-tokenized with parse_special, detokenizes to itself
    tok = spm()
    for i in range(tok.n_vocab):
        text = tok.detokenize([i], unparse_special=True)
        again = tok.tokenize(text, add_special=False, parse_special=True)
        assert tok.detokenize(again, unparse_special=True) == text, i


def test_code_points_round_trip():
    # test-tokenizer-1-spm's unicode loop (every BMP code point, a stride above); U+2581 is "▁",
    # which comes back as a space by design
    tok = spm()
    cps = [*range(0x10000), *range(0x10000, 0x110000, 11)]
    for cp in cps:
        if 0xD800 <= cp <= 0xDFFF or 0x40000 <= cp <= 0xE0000 or cp == 0x2581:
            continue
        text = chr(cp)
        tokens = tok.tokenize(text, add_special=False, parse_special=True)
        assert tok.detokenize(tokens, unparse_special=True) == text, hex(cp)


# ---- llama-server's recorded prompts and completions ----------------------------------------

@pytest.mark.parametrize("name", GOLDEN)
def test_golden_prompt_tokens(name):
    tok, cases = golden(name)
    for case in cases:
        assert tok.tokenize(case["prompt"], add_special=True, parse_special=True) == case["prompt_tokens"]
        assert len(case["prompt_tokens"]) == case["prompt_n"]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_content_from_pieces(name):
    tok, cases = golden(name)
    for case in cases:
        text = b"".join(tok.token_to_piece(t) for t in case["tokens"]).decode("utf-8")
        assert text == case["content"]


# ---- special tokens, spaces, bytes (libllama) -----------------------------------------------

@pytest.mark.parametrize("text, add_special, parse_special, want", [
    ("", True, False, [1]),
    ("", False, False, []),
    ("Hello", True, False, [1, 15043]),
    ("<s>Hello</s>", True, True, [1, 1, 15043, 2]),
    ("<s>Hello</s>", True, False, [1, 529, 29879, 29958, 10994, 829, 29879, 29958]),
    # a space is prefixed again after every special token, so "there" becomes "▁there"
    ("Hi</s>there", False, True, [6324, 2, 727]),
    ("Hi</s> there", False, True, [6324, 2, 29871, 727]),
    # no "é"+"🦙" merges: "▁é" then the emoji's four <0xXX> byte tokens
    ("é🦙", False, False, [904, 243, 162, 169, 156]),
    ("\x00", False, False, [29871, 3]),
])
def test_tokenize_specials_and_bytes(text, add_special, parse_special, want):
    assert spm().tokenize(text, add_special, parse_special) == want


@pytest.mark.parametrize("tokens, remove_special, unparse_special, want", [
    ([1, 15043], False, False, " Hello"),
    ([1, 15043], True, False, " Hello"),       # removing BOS keeps the space after it
    ([15043], False, False, "Hello"),          # the prefixed space is dropped from the first piece
    ([1, 15043, 2], True, True, " Hello</s>"),  # EOS is only removed when the vocab adds it
    ([1, 15043, 2], False, True, "<s> Hello</s>"),
    ([29871, 15043], False, False, " Hello"),
    ([0, 29871, 15043], False, False, "  Hello"),  # a hidden first token still uses up the strip
    ([0, 29871, 15043], False, True, "<unk>  Hello"),
])
def test_detokenize_space_rules(tokens, remove_special, unparse_special, want):
    assert spm().detokenize(tokens, remove_special, unparse_special) == want


def test_token_to_piece():
    tok = spm()
    assert tok.token_to_piece(15043) == b" Hello"
    assert tok.token_to_piece(13) == b"\n"           # <0x0A>
    assert tok.token_to_piece(243) == b"\xf0"        # <0xF0>, half a character on its own
    assert tok.token_to_piece(1) == b"<s>"
    assert tok.token_to_piece(1, special=False) == b""
    assert tok.token_to_piece(0, special=False) == b""  # <unk> is hidden like a control token
    with pytest.raises(ValueError):
        tok.token_to_piece(tok.n_vocab)


def test_metadata_and_token_classes():
    tok = spm()
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, tok.add_bos) == (32000, 1, 2, True)
    assert tok.is_eog(2) and not tok.is_eog(1) and not tok.is_eog(15043)
    assert tok.is_control(1) and tok.is_control(2) and not tok.is_control(0)
    assert not tok.is_control(15043)

    small = _load("models", "stories260K.gguf")
    assert (small.n_vocab, small.bos_id, small.eos_id, small.add_bos) == (512, 1, 2, True)
    assert small.pad_id is None  # the file says 0xFFFFFFFF, which llama.cpp ignores
    assert [t for t in range(small.n_vocab) if small.is_eog(t)] == [2]


def test_long_prompt():
    # a prompt of a few thousand tokens goes through the merge loop in one piece
    tok = spm()
    text = "\n".join(t for t, _ in vocab_cases()) * 5
    tokens = tok.tokenize(text, add_special=False)
    assert len(tokens) > 2000
    assert tok.detokenize(tokens) == text

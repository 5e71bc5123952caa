"""The cheap lower bound on a prompt's tokens (api/prompts.min_tokens) against the real tokenizers, and the
per-request prompt limit it serves: no model, no server."""
import pytest

from slotserve.api.errors import ApiError
from slotserve.api.prompts import min_tokens, prompt_limit, tokenize_prompts
from slotserve.model.gguf_file import GGUFFile
from slotserve.model.tokenizer import Tokenizer

TEXTS = ["", "a", "Hello world", "Once upon a time, there was a little girl named Lily.\n\n",
         "    indented\t\ttabs\r\n", "ünïcødé ½ 漢字 🙂🙂", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         "<s> specials </s> in text <|im_end|>", "x" * 3000, "the " * 500, "1234567890" * 50]


@pytest.fixture(scope="module")
def stories_tok(stories_path):
    return Tokenizer.from_gguf(GGUFFile(stories_path))


@pytest.mark.parametrize("text", TEXTS)
def test_bound_never_exceeds_the_real_count(stories_tok, bpe_model, text):
    for tok in (stories_tok, bpe_model.tokenizer):
        for parse_special in (False, True):
            assert min_tokens(tok, text) <= len(tok.tokenize(text, add_special=False, parse_special=parse_special))


def test_limit_refuses_before_tokenizing(stories_tok):
    with prompt_limit(100):
        with pytest.raises(ApiError) as exc:
            tokenize_prompts(stories_tok, "word " * 100_000)
        assert exc.value.kind == "exceed_context_size" and "at least" in exc.value.message
        assert exc.value.extra["n_ctx"] == 100 and exc.value.extra["n_prompt_tokens"] >= 100
        with pytest.raises(ApiError):
            tokenize_prompts(stories_tok, [1] * 99 + ["more"])  # ids then text: one prompt, counted together
        assert len(tokenize_prompts(stories_tok, "a short one")[0]) < 100
    assert len(tokenize_prompts(stories_tok, [1] * 500)[0]) == 500  # no limit outside the block

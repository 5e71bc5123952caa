r"""BPE pre-tokenizers: how `tokenizer.ggml.pre` cuts text into words before the merges run.

llama.cpp (src/llama-vocab.cpp, unicode.cpp) maps each `pre` name to a list of expressions applied one
after the other; each expression cuts every piece so far into its matches *and* the text between them
(Hugging Face's "isolated" Split). Its hand-written scanners for the GPT-2 and LLaMA-3 expressions behave
as the expressions read, so the `regex` package runs the expressions themselves; its \s is the Unicode
White_Space set, the same as llama.cpp's whitespace table. Expressions whose llama.cpp scanner departs
from the plain regex, or that llama.cpp runs through std::regex with literal non-ASCII ranges, are not
listed: their vocabularies are refused rather than tokenized differently.

The categories (\p{L}, \p{N}, \p{P}, \p{M}) must be llama.cpp's, whose tables are Unicode 15.1, where `regex`
knows a later Unicode: a CJK letter of Unicode 17 ends a word in one and not in the other. Every code point of
Unicode 15.1 has the same major category in both, so each \p{X} becomes "\p{X} less what Unicode 15.1
(`unicodedata2` 15.1) does not put in X" — a few dozen ranges of later additions — in `regex`'s set syntax.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import regex
import unicodedata2

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # the tokenizer.ggml.pre value
    exprs: tuple[str, ...]
    ignore_merges: bool = False  # a word that is a whole vocabulary entry is taken as it is
    add_bos: bool = False  # the default of tokenizer.ggml.add_bos_token
    clean_spaces: bool = True  # detokenize's clean_up_tokenization_spaces


QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
STARCODER = (r"\p{N}", GPT2)
DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}")
FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")


def _family(names: str, exprs: tuple[str, ...], **flags) -> dict[str, PreTokenizer]:
    return {name: PreTokenizer(name, exprs, **flags) for name in names.split()}


# tokenizer.ggml.pre -> pre-tokenizer, with the flags llama.cpp's load() sets for that name
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_family("default", DEFAULT),
    **_family("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", (LLAMA3,),
              ignore_merges=True, add_bos=True),
    **_family("dbrx smaug-bpe", (LLAMA3,)),
    **_family("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert exaone4 mpt "
              "olmo jais", (GPT2,)),
    **_family("trillion granite-docling", (GPT2,), clean_spaces=False),
    **_family("starcoder refact codeshell exaone minerva-7b mellum2", STARCODER),
    **_family("smollm command-r", STARCODER, clean_spaces=False),
    **_family("stablelm2 megrez", (QWEN2,)),
    **_family("qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open grok-2", (QWEN2,), clean_spaces=False),
    **_family("qwen35", (QWEN35,), clean_spaces=False),
    **_family("deepseek-coder", DEEPSEEK_CODER, clean_spaces=False),
    **_family("falcon", FALCON),
}


def pre_tokenizer(pre: str | None) -> PreTokenizer:
    if not pre:  # llama.cpp warns ("generation quality will be degraded") and uses the default
        pre = "default"
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; supported: "
                         f"{', '.join(sorted(PRE_TOKENIZERS))}")
    return PRE_TOKENIZERS[pre]


UNICODE_VERSION = "15.1.0"  # llama.cpp 11434's unicode-data.cpp


@cache
def _later_additions(major: str) -> str:
    """Ranges of the code points `regex` puts in category `major` and Unicode 15.1 does not."""
    if unicodedata2.unidata_version != UNICODE_VERSION:
        raise RuntimeError(f"unicodedata2 {unicodedata2.unidata_version} is installed; the BPE pre-tokenizers "
                           f"need Unicode {UNICODE_VERSION}, llama.cpp's (pip install unicodedata2=={UNICODE_VERSION})")
    every = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    later = [ord(m.group()) for m in regex.finditer(rf"\p{{{major}}}", every)
             if unicodedata2.category(m.group())[0] != major]
    ranges: list[list[int]] = []
    for cp in later:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_CATEGORY = regex.compile(r"\\p\{([LNPM])\}|\\.")


def with_llama_cpp_categories(expr: str) -> str:
    """`expr` with each \\p{L}, \\p{N}, \\p{P}, \\p{M} narrowed to Unicode 15.1 (a nested set, which `regex`
    allows inside a character class too, in its V1 mode)."""
    def narrow(m: regex.Match) -> str:
        if not m.group(1):
            return m.group(0)  # another escape, kept as it is
        later = _later_additions(m.group(1))
        return f"[\\p{{{m.group(1)}}}--[{later}]]" if later else m.group(0)
    return _CATEGORY.sub(narrow, expr)


class Splitter:
    """Cuts text into words with a pre-tokenizer's expressions, each one isolating its matches."""

    def __init__(self, exprs: tuple[str, ...]):
        self._patterns = [regex.compile(with_llama_cpp_categories(e), regex.V1) for e in exprs]

    def split(self, text: str) -> list[str]:
        words = [text]
        for pattern in self._patterns:
            out: list[str] = []
            for word in words:
                pos = 0
                for m in pattern.finditer(word):
                    start, end = m.span()
                    if start > pos:
                        out.append(word[pos:start])
                    if end > start:
                        out.append(word[start:end])
                    pos = end
                if pos < len(word):
                    out.append(word[pos:])
            words = out
        return words

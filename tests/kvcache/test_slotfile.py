"""Slot files against llama-server's own file, and every way a file can be wrong."""
import dataclasses
import struct

import numpy as np
import pytest
from conftest import shared_file

from slotserve.kvcache.slotfile import (
    SlotFileError, SlotState, convert, decode_slot_file, encode_slot_file,
)

# stories260K, as llama-server ran it for the golden file
STORIES = dict(n_layer=5, n_embd_k_gqa=32, n_embd_v_gqa=32, n_ctx_slot=256, n_vocab=512)
# a small made-up model: K and V widths differ so a swapped or mis-transposed V cannot pass
SMALL = dict(n_layer=2, n_embd_k_gqa=8, n_embd_v_gqa=6, n_ctx_slot=16, n_vocab=100)


@pytest.fixture(scope="module")
def golden() -> bytes:
    return shared_file("golden", "llama-server-slot-france.bin").read_bytes()


def small_state(n=5, dtype=np.float16, seed=0, **kw) -> SlotState:
    rng = np.random.default_rng(seed)
    k = [rng.standard_normal((n, 8)).astype(dtype) for _ in range(2)]
    v = [rng.standard_normal((n, 6)).astype(dtype) for _ in range(2)]
    return SlotState(tokens=[1, *rng.integers(2, 100, n - 1).tolist()][:n], k=k, v=v, **kw)


def decode_small(data: bytes, **kw) -> SlotState:
    return decode_slot_file(data, **{**SMALL, **kw})


def assert_same(a: SlotState, b: SlotState):
    assert a.tokens == b.tokens
    assert (a.n_stream, a.stream, a.seq_id, a.v_trans) == (b.n_stream, b.stream, b.seq_id, b.v_trans)
    for x, y in zip(a.k + a.v, b.k + b.v, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def offsets(n: int, n_cells: int | None = None) -> dict[str, int]:
    """Byte offsets of the fields of a single-stream file with n packed tokens (see slotfile's docstring)."""
    n_cells = n if n_cells is None else n_cells
    payload_end = 12 + 4 * (n + 4)
    cells = payload_end + 8
    data = cells + 12 * n_cells
    return dict(n_words=8, marker=12, tok_version=16, n_tokens=20, tokens=24, n_media=24 + 4 * n,
                n_stream=payload_end, cell_count=payload_end + 4, cells=cells, v_trans=data,
                n_layer=data + 4, n_rot_k=data + 8, n_rot_v=data + 12, k0_type=data + 16, k0_row=data + 20)


def patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def legacy(data: bytes, n: int) -> bytes:
    """The same file with its packed payload replaced by the plain token list older servers wrote."""
    tokens = data[24:24 + 4 * n]
    return data[:8] + struct.pack("<I", n) + tokens + data[12 + 4 * (n + 4):]


# ------------------------------------------------------------------------------------- the golden file

def test_golden_decodes(golden):
    s = decode_slot_file(golden, **STORIES)
    assert len(s.tokens) == 84 and s.tokens[0] == 1  # BOS
    assert len(s.k) == len(s.v) == 5
    for a in s.k + s.v:
        assert a.shape == (84, 32) and a.dtype == np.float16
        assert np.isfinite(a).all() and np.abs(a).max() > 0
    # llama-server -np 2 keeps one KV stream per slot; the file came from slot 1
    assert (s.n_stream, s.stream, s.seq_id) == (2, 1, 1)
    assert s.v_trans is False  # V written row-wise


def test_golden_reencodes_byte_identical(golden):
    assert encode_slot_file(decode_slot_file(golden, **STORIES)) == golden


def test_golden_transposed_v_round_trips(golden):
    s = decode_slot_file(golden, **STORIES)
    t = dataclasses.replace(s, v_trans=True)
    data = encode_slot_file(t)
    assert len(data) == len(golden) and data != golden
    back = decode_slot_file(data, **STORIES)
    assert_same(back, t)
    assert encode_slot_file(back) == data


def test_golden_every_prefix_fails_cleanly(golden):
    cuts = list(range(0, 2000)) + list(range(2000, len(golden), 97)) + [len(golden) - 1]
    for cut in cuts:
        with pytest.raises(SlotFileError, match="truncated"):
            decode_slot_file(golden[:cut], **STORIES)


def test_golden_against_wrong_model_or_slot(golden):
    with pytest.raises(SlotFileError, match="n_layer 5 in file, model has 4"):
        decode_slot_file(golden, **{**STORIES, "n_layer": 4})
    with pytest.raises(SlotFileError, match="token id 4[0-9][0-9] >= n_vocab 400"):
        decode_slot_file(golden, **{**STORIES, "n_vocab": 400})
    with pytest.raises(SlotFileError, match="file holds 84 tokens, slot context is 80"):
        decode_slot_file(golden, **{**STORIES, "n_ctx_slot": 80})
    with pytest.raises(SlotFileError, match="layer 0 K row size is 64 bytes; model needs 16"):
        decode_slot_file(golden, **{**STORIES, "n_embd_k_gqa": 16})
    with pytest.raises(SlotFileError, match="layer 0 V row size"):
        decode_slot_file(golden, **{**STORIES, "n_embd_v_gqa": 64})


# ------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("v_trans", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip(v_trans, dtype):
    s = small_state(dtype=dtype, v_trans=v_trans)
    back = decode_small(encode_slot_file(s))
    assert_same(back, s)


def test_transposed_v_is_dimension_major():
    s = small_state(n=3, v_trans=True)
    data = encode_slot_file(s)
    # the last layer's V is the file's tail: n_embd_v runs of n_cells elements
    tail = np.frombuffer(data[-3 * 6 * 2:], dtype="<f2").reshape(6, 3)
    np.testing.assert_array_equal(tail, s.v[-1].T)
    assert struct.unpack_from("<iII", data, len(data) - 3 * 6 * 2 - 12) == (1, 2, 6)


def test_multi_stream_round_trip():
    s = small_state(n_stream=4, stream=2, seq_id=2)
    assert_same(decode_small(encode_slot_file(s)), s)


def test_empty_slot_round_trip():
    s = SlotState(tokens=[], k=[np.zeros((0, 8), np.float16)] * 2, v=[np.zeros((0, 6), np.float16)] * 2)
    data = encode_slot_file(s)
    assert len(data) == 12 + 16 + 4 + 4  # header, packed payload, n_stream, one empty cell count
    assert_same(decode_small(data), s)


def test_legacy_payload():
    s = small_state()
    back = decode_small(legacy(encode_slot_file(s), 5))
    assert_same(back, s)
    # we always write the packed form, as current llama-server does
    assert encode_slot_file(back) == encode_slot_file(s)


def test_legacy_negative_token_refused():
    data = legacy(encode_slot_file(small_state()), 5)
    with pytest.raises(SlotFileError, match=r"token id -5 < 0 \(at position 0\)"):
        decode_small(patch(data, 12, "<i", -5))


def test_convert():
    s = small_state(dtype=np.float16)
    f = convert(s, np.float32)
    assert all(a.dtype == np.float32 for a in f.k + f.v)
    assert_same(convert(f, np.float16), s)
    assert s.k[0].dtype == np.float16  # the original is not modified
    with pytest.raises(ValueError, match="float16 or float32"):
        convert(s, np.float64)


def test_encode_refuses_inconsistent_state():
    s = small_state()
    with pytest.raises(ValueError, match="shape"):
        encode_slot_file(dataclasses.replace(s, tokens=s.tokens[:4]))
    with pytest.raises(ValueError, match="float16 or float32"):
        encode_slot_file(dataclasses.replace(s, k=[a.astype(np.float64) for a in s.k]))
    with pytest.raises(ValueError, match="one K and one V"):
        encode_slot_file(dataclasses.replace(s, v=s.v[:1]))


# ------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("v_trans", [False, True])
def test_every_prefix_raises_slotfileerror(v_trans):
    data = encode_slot_file(small_state(v_trans=v_trans))
    for cut in range(len(data)):
        with pytest.raises(SlotFileError):
            decode_small(data[:cut])
    decode_small(data)


def test_every_prefix_of_legacy_file_raises_slotfileerror():
    data = legacy(encode_slot_file(small_state()), 5)
    for cut in range(len(data)):
        with pytest.raises(SlotFileError):
            decode_small(data[:cut])


def test_trailing_bytes():
    with pytest.raises(SlotFileError, match="3 trailing bytes"):
        decode_small(encode_slot_file(small_state()) + b"abc")


def test_header():
    data = encode_slot_file(small_state())
    with pytest.raises(SlotFileError, match="bad magic 0x67677372"):
        decode_small(patch(data, 0, "<I", 0x67677372))
    with pytest.raises(SlotFileError, match="bad magic"):
        decode_small(b"GGUF" + data[4:])
    with pytest.raises(SlotFileError, match="version 3 is not supported"):
        decode_small(patch(data, 4, "<I", 3))


BAD_FIELDS = [
    # (field, struct format, value, message)
    ("n_words", "<I", 1000, "truncated"),
    ("tok_version", "<I", 2, "token payload version 2"),
    ("n_tokens", "<I", 7, "says 7 tokens but holds only"),
    ("n_tokens", "<I", 3, "2 trailing words"),
    ("n_media", "<I", 1, "multimodal"),
    ("tokens", "<i", 100, "token id 100 >= n_vocab 100"),
    ("n_stream", "<I", 0, "n_stream is 0"),
    ("n_stream", "<I", 10**9, "n_stream 1000000000"),
    ("cell_count", "<I", 4, "5 tokens but 4 KV cells"),
    ("cell_count", "<I", 0, "5 tokens but no KV cells"),
    ("cells", "<i", 1, "cell 0 has position 1"),
    ("v_trans", "<I", 2, "v_trans is 2"),
    ("n_layer", "<I", 3, "n_layer 3 in file, model has 2"),
    ("n_rot_k", "<I", 64, "rotated"),
    ("n_rot_v", "<I", 64, "rotated"),
    ("k0_type", "<i", 8, "ggml type 8"),
    ("k0_type", "<i", 0, "row size is 16 bytes; model needs 8 x f32 = 32"),
    ("k0_row", "<Q", 2**63, "row size"),
]


@pytest.mark.parametrize("field,fmt,value,message", BAD_FIELDS, ids=[f"{b[0]}={b[2]}" for b in BAD_FIELDS])
def test_bad_field(field, fmt, value, message):
    data = encode_slot_file(small_state())
    with pytest.raises(SlotFileError, match=message):
        decode_small(patch(data, offsets(5)[field], fmt, value))


def test_bad_cells():
    data = encode_slot_file(small_state())
    cells = offsets(5)["cells"]
    with pytest.raises(SlotFileError, match="cell 3 has position 4"):
        decode_small(patch(data, cells + 3 * 12, "<i", 4))
    with pytest.raises(SlotFileError, match="cell 2 belongs to 2 sequences"):
        decode_small(patch(data, cells + 2 * 12 + 4, "<I", 2))
    with pytest.raises(SlotFileError, match="cell 1 belongs to sequence 7, cell 0 to 0"):
        decode_small(patch(data, cells + 1 * 12 + 8, "<i", 7))
    with pytest.raises(SlotFileError, match="negative seq_id"):
        decode_small(patch(data, cells + 8, "<i", -1))


def test_two_streams_with_cells_refused():
    one = encode_slot_file(small_state())
    o = offsets(5)
    stream = one[o["cell_count"]:]  # cell count + cells + layers of the one stream
    two = one[:o["n_stream"]] + struct.pack("<I", 2) + stream + stream
    with pytest.raises(SlotFileError, match="streams 0 and 1 both hold cells"):
        decode_small(two)


def test_bad_v_transposed_header():
    s = small_state(v_trans=True)
    data = encode_slot_file(s)
    v0 = offsets(5)["k0_type"] + 2 * (12 + 5 * 8 * 2)  # after both K layers
    assert struct.unpack_from("<iII", data, v0) == (1, 2, 6)
    with pytest.raises(SlotFileError, match="layer 0 V element size is 4, f16 needs 2"):
        decode_small(patch(data, v0 + 4, "<I", 4))
    with pytest.raises(SlotFileError, match="layer 0 V n_embd_v_gqa 7 in file, model has 6"):
        decode_small(patch(data, v0 + 8, "<I", 7))
    with pytest.raises(SlotFileError, match="layer 0 V has ggml type 2"):
        decode_small(patch(data, v0, "<i", 2))


def test_too_many_tokens_for_slot():
    data = encode_slot_file(small_state(n=12))
    with pytest.raises(SlotFileError, match="file holds 12 tokens, slot context is 10"):
        decode_small(data, n_ctx_slot=10)
    assert decode_small(data, n_ctx_slot=12).n_tokens == 12

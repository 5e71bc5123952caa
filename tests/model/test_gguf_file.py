"""GGUFFile's own metadata pass gives what gguf's GGUFReader gives, value for value, and the same tensors."""
import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from slotserve.model.gguf_file import GGUFFile

VALUES = {  # one of every value type, each at a value its width must keep exactly
    "t.u8": (255, GGUFValueType.UINT8), "t.i8": (-128, GGUFValueType.INT8),
    "t.u16": (65535, GGUFValueType.UINT16), "t.i16": (-32768, GGUFValueType.INT16),
    "t.u32": (2**32 - 1, GGUFValueType.UINT32), "t.i32": (-2**31, GGUFValueType.INT32),
    "t.u64": (2**64 - 1, GGUFValueType.UINT64), "t.i64": (-2**63, GGUFValueType.INT64),
    "t.f32": (0.1, GGUFValueType.FLOAT32), "t.f64": (0.1, GGUFValueType.FLOAT64),
    "t.bool": (True, GGUFValueType.BOOL), "t.str": ("héllo {{ x }}", GGUFValueType.STRING),
}


def _write(path, with_tensor=True):
    writer = GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    for key, (value, vtype) in VALUES.items():
        writer.add_key_value(key, value, vtype)
    writer.add_array("t.floats", [0.5, -1.25, 3.0e38])
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.empty", [])
    writer.add_array("t.nested", [[1, 2], [3]])
    # a byte-level vocabulary piece that is not UTF-8 on its own must survive byte for byte
    writer.add_token_list(["a", "", "é", b"\xe2\x96".decode("utf-8", "surrogateescape").encode("utf-8", "surrogateescape")])
    if with_tensor:
        writer.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _expected(reader: GGUFReader) -> dict:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
            out[key] = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        elif key != "t.nested":  # contents() flattens arrays of arrays (gguf's FIXME); ours keeps them nested
            out[key] = field.contents()
    return out


@pytest.mark.parametrize("name", ["written", "stories"])
def test_metadata_and_tensors_match_gguf(name, tmp_path, stories_path):
    path = _write(tmp_path / "t.gguf") if name == "written" else stories_path
    ours, theirs = GGUFFile(path), GGUFReader(path)
    want = _expected(theirs)
    if name == "written":
        assert ours.metadata.pop("t.nested") == [[1, 2], [3]]
    assert list(ours.metadata) == list(want)
    for key, value in want.items():
        assert ours.metadata[key] == value and type(ours.metadata[key]) is type(value), key
    assert (ours.alignment, ours.data_offset) == (theirs.alignment, theirs.data_offset)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data)


def test_undecodable_piece_keeps_its_bytes(tmp_path):
    tokens = GGUFFile(_write(tmp_path / "t.gguf")).metadata["tokenizer.ggml.tokens"]
    assert tokens[3].encode("utf-8", "surrogateescape") == b"\xe2\x96"


def test_cut_metadata_is_an_error(tmp_path):
    path = _write(tmp_path / "t.gguf", with_tensor=False)
    data = path.read_bytes()
    path.write_bytes(data[:data.rfind(b"\xe2\x96") + 1])  # the last token's bytes are cut short
    with pytest.raises(ValueError, match="past the end of the file"):
        GGUFFile(path)

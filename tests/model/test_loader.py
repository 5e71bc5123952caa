"""Broken model files are refused at load with one line naming the file and the problem."""
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from slotserve.model.loader import ModelLoadError, load_model


def rewrite(src, dst, arch="llama", retype=None, extra=None):
    """Copy a GGUF, optionally under another architecture, with one tensor of another type or with `extra`
    metadata ({key: (value, GGUFValueType)})."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch)
    for key, (value, vtype) in (extra or {}).items():
        writer.add_key_value(key, value, vtype)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        value = field.contents()
        new_key = key.replace("llama.", f"{arch}.", 1) if key.startswith("llama.") else key
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(new_key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(new_key, value, vtype)
    for t in reader.tensors:
        data = np.array(t.data)
        if retype and t.name == retype:
            # 64 x 64 F32 -> the same number of Q5_1 blocks (24 bytes per 32 weights)
            raw = np.zeros((data.shape[0], data.shape[1] // 32 * 24), np.uint8)
            writer.add_tensor(t.name, raw, raw_dtype=GGMLQuantizationType.Q5_1)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_rewritten_copy_still_loads(stories_path, tmp_path):
    """The helper above makes valid files, so the failures below are the intended ones."""
    rewrite(stories_path, tmp_path / "copy.gguf")
    assert load_model(tmp_path / "copy.gguf").hparams.n_layer == 5


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file"),
    ("not_gguf", "not a GGUF file"),
    ("truncated_header", "corrupt or truncated GGUF file"),
    ("truncated_data", "truncated"),
    ("other_arch", "architecture 'gpt2' is not supported"),
    ("unsupported_type", "type Q5_1, which is not supported"),
])
def test_broken_files_are_refused_with_a_clear_message(stories_path, tmp_path, case, expected):
    path = tmp_path / f"{case}.gguf"
    data = stories_path.read_bytes()
    if case == "not_gguf":
        path.write_bytes(b"PK\x03\x04" + data[4:])
    elif case == "truncated_header":
        path.write_bytes(data[:1000])
    elif case == "truncated_data":
        path.write_bytes(data[: len(data) // 2])
    elif case == "other_arch":
        rewrite(stories_path, path, arch="gpt2")
    elif case == "unsupported_type":
        rewrite(stories_path, path, retype="blk.0.attn_q.weight")
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_cli_refuses_a_broken_model_in_one_line(stories_path, tmp_path):
    bad = tmp_path / "half.gguf"
    bad.write_bytes(stories_path.read_bytes()[:600000])
    proc = subprocess.run([sys.executable, "-m", "slotserve", "-m", str(bad), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"slotserve: cannot load model '{bad}': corrupt or truncated GGUF file" in proc.stderr


def to_bf16_bytes(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) as the raw bytes GGUF stores, (rows, 2 * cols) uint8."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    bf = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return bf.view(np.uint8).reshape(a.shape[0], -1)


def test_bf16_weights_load_and_agree_with_f32(stories_path, tmp_path):
    """No shared model has BF16 tensors: make one from stories260K and compare it with the original."""
    from slotserve.model.forward import Llama, Segment

    reader = GGUFReader(stories_path)
    path = tmp_path / "bf16.gguf"
    writer = GGUFWriter(path, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = {"sub_type": field.types[-1]} if field.types[0] == GGUFValueType.ARRAY else {}
        writer.add_key_value(key, field.contents(), field.types[0], **sub)
    for t in reader.tensors:
        data = np.array(t.data)
        if data.ndim == 2:
            writer.add_tensor(t.name, to_bf16_bytes(data), raw_dtype=GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    assert sum(t.tensor_type == GGMLQuantizationType.BF16 for t in GGUFReader(path).tensors) == 5 * 7 + 2
    bf16, f32 = load_model(path), load_model(stories_path)
    tokens = f32.tokenizer.tokenize("Once upon a time, there was a little girl")

    def last_logits(loaded):
        model = Llama(loaded.hparams, loaded.weights)
        return model.forward([Segment(model.new_cache(64), tokens)])[0].logits

    logits = [last_logits(bf16), last_logits(f32)]
    assert int(np.argmax(logits[0])) == int(np.argmax(logits[1]))
    # bfloat16 keeps 8 bits of mantissa: relative weight error up to 2^-9
    np.testing.assert_allclose(logits[0], logits[1], atol=0.15)
    assert not np.array_equal(logits[0], logits[1])

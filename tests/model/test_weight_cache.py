"""The widened-weights cache against real GGUF files: hit, miss, stale, damaged, disabled, size limit."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from slotserve.model.loader import load_model
from slotserve.model.weight_cache import WeightCache, flatten

MODEL = Path(__file__).resolve().parents[2] / "models" / "stories260K.gguf"


@pytest.fixture()
def gguf(tmp_path):
    copy = tmp_path / "model.gguf"
    shutil.copy(MODEL, copy)
    return copy


@pytest.fixture(scope="module")
def reference():
    return flatten(load_model(MODEL).weights)


def assert_same(weights, reference):
    arrays = flatten(weights)
    assert arrays.keys() == reference.keys()
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, reference[name], err_msg=name)


def is_mapped(weights) -> bool:
    return all(not a.flags.writeable and not a.flags.owndata for a in flatten(weights).values())


def test_miss_writes_an_entry_then_a_hit_maps_it(gguf, tmp_path, reference):
    cache = WeightCache(tmp_path / "cache")
    first = load_model(gguf, weight_cache=cache)
    entry = cache.entry_path(gguf)
    assert entry.is_file() and not list(entry.parent.glob(".*.tmp"))
    assert is_mapped(first.weights)  # the writer maps its own entry too, to share it
    second = load_model(gguf, weight_cache=cache)
    assert is_mapped(second.weights)
    assert_same(second.weights, reference)
    assert second.fingerprint == first.fingerprint == load_model(gguf).fingerprint


def test_disabled_cache_writes_nothing(gguf, tmp_path, reference, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = load_model(gguf)
    assert not (tmp_path / "xdg").exists()
    assert not is_mapped(model.weights)
    assert_same(model.weights, reference)


def test_default_directory_follows_xdg_cache_home(gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert WeightCache().entry_path(gguf).parent == tmp_path / "xdg" / "slotserve" / "weights"


def test_a_changed_gguf_makes_the_entry_stale(gguf, tmp_path):
    cache = WeightCache(tmp_path / "cache")
    load_model(gguf, weight_cache=cache)
    # same path and size, other weights: the final norm (F32) set to 2.0, written over the old file
    norm = next(t for t in GGUFReader(gguf).tensors if t.name == "output_norm.weight")
    data = bytearray(gguf.read_bytes())
    data[norm.data_offset:norm.data_offset + norm.n_bytes] = np.full(norm.n_elements, 2.0, np.float32).tobytes()
    gguf.write_bytes(bytes(data))
    reloaded = load_model(gguf, weight_cache=cache)
    assert reloaded.fingerprint != load_model(MODEL).fingerprint
    assert (reloaded.weights.output_norm == 2.0).all()
    assert is_mapped(reloaded.weights)


@pytest.mark.parametrize("damage", ["data", "header", "truncated", "garbage"])
def test_a_damaged_entry_is_rebuilt(gguf, tmp_path, reference, damage):
    cache = WeightCache(tmp_path / "cache")
    load_model(gguf, weight_cache=cache)
    entry = cache.entry_path(gguf)
    raw = bytearray(entry.read_bytes())
    if damage == "data":
        meta_len = int.from_bytes(raw[12:16], "little")
        offset, shape, _ = json.loads(raw[20:20 + meta_len])["arrays"]["output_norm"]
        end = offset + 4 * int(np.prod(shape))
        raw[end - 8:end] = b"\xff" * 8  # an array's last values
    elif damage == "header":
        raw[40] ^= 0x01
    elif damage == "truncated":
        raw = raw[:len(raw) // 2]
    else:
        raw = bytearray(b"not a cache" * 10)
    entry.write_bytes(bytes(raw))
    model = load_model(gguf, weight_cache=cache)
    assert_same(model.weights, reference)
    assert is_mapped(model.weights)
    assert entry.read_bytes() != bytes(raw)  # rewritten


def test_an_entry_over_the_size_limit_is_not_written(gguf, tmp_path, reference):
    cache = WeightCache(tmp_path / "cache", limit_bytes=1000)
    model = load_model(gguf, weight_cache=cache)
    assert not cache.entry_path(gguf).exists()
    assert_same(model.weights, reference)


def test_the_least_recently_used_entry_is_evicted_to_make_room(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    shutil.copy(MODEL, a)
    shutil.copy(MODEL, b)
    cache = WeightCache(tmp_path / "cache")
    load_model(a, weight_cache=cache)
    one_entry = cache.entry_path(a).stat().st_size
    small = WeightCache(tmp_path / "cache", limit_bytes=one_entry + one_entry // 2)
    load_model(b, weight_cache=small)
    assert small.entry_path(b).exists() and not small.entry_path(a).exists()


def test_a_hit_reports_the_load_complete(gguf, tmp_path):
    cache = WeightCache(tmp_path / "cache")
    load_model(gguf, weight_cache=cache)
    seen = []
    load_model(gguf, lambda done, total: seen.append((done, total)), weight_cache=cache)
    assert seen and seen[-1][0] == seen[-1][1]

"""What a sidecar verifies, through the store's one read path: the file's meaning (tokens and K/V),
the model it came from, and the older sidecars (raw-bytes crc32, sha256) that must keep verifying."""
import hashlib
import json
import struct
import zlib

import pytest
from conftest import shared_file
from tiny import TINY, restored, same, tiny_cache, tiny_store

from slotserve.kvcache.cache import KVCache
from slotserve.kvcache.persist import ModelIdentity, SlotStore
from slotserve.kvcache.sidecar import SidecarMismatch
from slotserve.kvcache.slotfile import SlotFileError


@pytest.fixture
def store(tmp_path) -> SlotStore:
    return tiny_store(tmp_path / "slots")


def paths(store, name="s.bin"):
    return store.dir.root / name, store.dir.root / (name + ".meta.json")


def to_legacy(data: bytes) -> bytes:
    """llama.cpp's test_slot_restore_legacy_token_list: the packed payload rewritten as a plain token list."""
    n_words = struct.unpack_from("<I", data, 8)[0]
    n = struct.unpack_from("<I", data, 20)[0]
    tokens = data[24:24 + 4 * n]
    return data[:8] + struct.pack("<I", n) + tokens + data[12 + 4 * n_words:]


def test_sidecar_round_trip(store):
    cache = tiny_cache()
    saved = store.save(cache, "s.bin")
    path, side = paths(store)
    meta = json.loads(side.read_text())
    assert meta["format"] == "slotserve-slot-meta/3" and meta["size"] == saved["n_written"] == path.stat().st_size
    assert meta["model_fingerprint"] == "fp-tiny" and meta["n_tokens"] == 5 and "previous" not in meta
    assert len(meta["content_crc32"]) == 8 and "crc32" not in meta
    back = restored(store, "s.bin")
    assert same(back, cache) and back.logits is not None  # the logits came from the sidecar


def test_the_legacy_token_list_still_verifies(store):
    """Issue 10: the checksum covers the decoded tokens, so llama.cpp's own rewrite of the payload restores."""
    cache = tiny_cache(n=6)
    store.save(cache, "s.bin")
    path, _ = paths(store)
    legacy = to_legacy(path.read_bytes())
    assert len(legacy) == path.stat().st_size - 16
    path.write_bytes(legacy)
    assert same(restored(store, "s.bin"), cache)


@pytest.mark.parametrize("where", ["token", "legacy token", "k byte", "v byte", "cell", "truncated"])
def test_a_changed_token_or_kv_byte_is_refused(store, where):
    store.save(tiny_cache(n=6), "s.bin")
    path, _ = paths(store)
    data = bytearray(path.read_bytes())
    if where == "token":
        data[28] ^= 0x01  # the second token, still a valid id
    elif where == "legacy token":
        data = bytearray(to_legacy(bytes(data)))
        data[16] ^= 0x01
    elif where == "k byte":
        data[len(data) // 2] ^= 0x40
    elif where == "v byte":
        data[-3] ^= 0x01
    elif where == "cell":
        end = 12 + 4 * (6 + 4) + 8
        data[end + 12 + 8] ^= 0x01  # seq_id of cell 1: decoding refuses it, damage is what is reported
    else:
        data = data[:-20]
    path.write_bytes(bytes(data))
    with pytest.raises(SidecarMismatch, match="file is damaged: content_crc32 mismatch"):
        restored(store, "s.bin")


def test_another_models_file_is_refused(store):
    store.save(tiny_cache(), "s.bin")
    other = tiny_store(store.dir.root, TINY.__class__(**{**TINY.__dict__, "fingerprint": "fp-other"}))
    with pytest.raises(SidecarMismatch, match="saved from another model: tiny"):
        restored(other, "s.bin")


@pytest.mark.parametrize("kind", ["crc32", "sha256"])
def test_older_raw_bytes_sidecars_still_verify(store, kind):
    """Sidecars written before /3 checksum the raw bytes: their files restore, damage is still caught."""
    cache = tiny_cache()
    store.save(cache, "s.bin")
    path, side = paths(store)
    raw = path.read_bytes()
    digest = f"{zlib.crc32(raw):08x}" if kind == "crc32" else hashlib.sha256(raw).hexdigest()
    meta = json.loads(side.read_text())
    del meta["content_crc32"]
    side.write_text(json.dumps({**meta, "format": "slotserve-slot-meta/2", kind: digest}))
    assert same(restored(store, "s.bin"), cache)
    flipped = bytearray(raw)
    flipped[-1] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(SidecarMismatch, match=f"file is damaged: {kind} mismatch"):
        restored(store, "s.bin")
    path.write_bytes(raw[:-2])
    with pytest.raises(SidecarMismatch, match=f"file is damaged: it is {len(raw) - 2} bytes, its sidecar says"):
        restored(store, "s.bin")
    side.write_text(json.dumps({kind: digest}))
    with pytest.raises(SidecarMismatch, match="no 'size'"):
        restored(store, "s.bin")


def test_a_resave_over_an_older_sidecar_keeps_it_as_previous(store):
    store.save(tiny_cache(seed=1), "s.bin")
    path, side = paths(store)
    raw = path.read_bytes()
    meta = json.loads(side.read_text())
    del meta["content_crc32"]
    side.write_text(json.dumps({**meta, "crc32": f"{zlib.crc32(raw):08x}"}))
    store.save(tiny_cache(seed=2), "s.bin")
    meta = json.loads(side.read_text())
    assert meta["previous"]["crc32"] == f"{zlib.crc32(raw):08x}" and "previous" not in meta["previous"]
    path.write_bytes(raw)  # as if the .bin's rename had not happened: the previous entry describes it
    assert same(restored(store, "s.bin"), tiny_cache(seed=1))


def test_damage_is_reported_rather_than_what_decoding_made_of_it(store):
    """Decoding runs before the checksum is known: a damaged file must surface as damage, and a file that
    matches its sidecar but does not fit the slot, as that."""
    store.save(tiny_cache(n=12, n_ctx=16), "s.bin")
    with pytest.raises(SlotFileError, match="file holds 12 tokens, slot context is 8"):
        restored(store, "s.bin", n_ctx=8)
    path, _ = paths(store)
    data = bytearray(path.read_bytes())
    data[12 + 4 * (12 + 4) + 8 + 12 * 12 + 16] = 7  # layer 0 K's ggml type: decoding refuses it
    path.write_bytes(bytes(data))
    with pytest.raises(SidecarMismatch, match="content_crc32 mismatch"):
        restored(store, "s.bin")


def test_llama_server_file_without_sidecar(tmp_path):
    stories = ModelIdentity("stories260K", "fp-stories", n_layer=5, n_embd_kv=32, n_vocab=512)
    store = tiny_store(tmp_path, stories)
    (tmp_path / "france.bin").write_bytes(shared_file("golden", "llama-server-slot-france.bin").read_bytes())
    assert store.dir.read_sidecar("france.bin") is None
    cache = KVCache(5, 4, 8, 256)
    assert store.restore(cache, "france.bin") == {"n_restored": 84, "n_read": 55280}
    assert cache.logits is None

"""The RAM prompt cache with real KVCache arrays (rows made up per token, so any mix-up shows), no model."""
import numpy as np
import pytest

from slotserve.kvcache.cache import KVCache
from slotserve.kvcache.prompt_state import load_into
from slotserve.kvcache.ram_tier import MiB, RamTier, prefer_stored, update_cache_on_select

N_LAYER, N_HEAD_KV, HEAD_DIM, N_CTX, N_VOCAB = 2, 2, 4, 64, 1000
ROW_BYTES = 2 * N_LAYER * N_HEAD_KV * HEAD_DIM * 2 + 4  # K and V rows in float16, and the token id


def filled(tokens, kv_type="f16", logits=True):
    """A cache whose row for a token depends on the token and everything before it, as real K/V do."""
    c = KVCache(N_LAYER, N_HEAD_KV, HEAD_DIM, N_CTX, kv_type)
    for pos in range(len(tokens)):
        seed = hash(tuple(tokens[:pos + 1])) % 1000
        for il in range(N_LAYER):
            k = np.full((1, N_HEAD_KV, HEAD_DIM), seed + il + 0.25, np.float32)
            c.write(il, pos, k, -k)
    c.append(list(tokens), np.arange(N_VOCAB, dtype=np.float32) + len(tokens) if logits else None)
    return c


def same_rows(a: KVCache, b: KVCache, n):
    return np.array_equal(a.k[:, :n], b.k[:, :n]) and np.array_equal(a.v[:, :n], b.v[:, :n])


def blank(kv_type="f16"):
    return KVCache(N_LAYER, N_HEAD_KV, HEAD_DIM, N_CTX, kv_type)


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_store_lookup_load_gives_the_same_cache(kv_type):
    ram = RamTier(8)
    src = filled(list(range(10, 30)), kv_type)
    assert ram.store_cache(src).stored
    hit = ram.lookup(list(range(10, 30)) + [99])
    assert hit.n_match == 20
    dst = blank(kv_type)
    ram.load_into(dst, hit)
    assert dst.tokens == src.tokens and same_rows(dst, src, 20)
    assert dst.logits.tolist() == src.logits.tolist()  # the whole state came back: its logits too


def test_a_longer_state_is_loaded_truncated_to_the_shared_prefix():
    ram = RamTier(8)
    src = filled([1, 2, 3, 4, 5, 6, 7, 8])
    ram.store_cache(src)
    hit = ram.lookup([1, 2, 3, 4, 9, 9])
    assert hit.n_match == 4 and len(ram.state(hit, "f16").tokens) == 8
    dst = blank()
    ram.load_into(dst, hit)
    assert dst.tokens == [1, 2, 3, 4] and same_rows(dst, src, 4) and dst.logits is None


def test_shared_prefixes_are_stored_once():
    ram = RamTier(8)
    base = list(range(100, 140))
    ram.store_cache(filled(base))
    assert ram.nbytes == 40 * ROW_BYTES + 4 * N_VOCAB  # and the float32 logits
    r = ram.store_cache(filled(base + [7, 8, 9]))
    assert r.stored and r.n_new == 3 and ram.nbytes == 43 * ROW_BYTES + 8 * N_VOCAB
    r = ram.store_cache(filled(base[:30] + [5, 5]))  # diverges inside the first run
    assert r.n_new == 2 and ram.n_tokens == 45 and ram.nbytes == 45 * ROW_BYTES + 12 * N_VOCAB
    for tokens in (base, base + [7, 8, 9], base[:30] + [5, 5]):
        dst = blank()
        ram.load_into(dst, ram.lookup(tokens))
        assert dst.tokens == tokens and same_rows(dst, filled(tokens), len(tokens))
        assert dst.logits[0] == len(tokens)  # the logits after each state's own last token


def test_a_held_state_is_not_stored_again_but_gains_its_logits():
    ram = RamTier(8)
    ram.store_cache(filled(list(range(10))))
    r = ram.store_cache(filled(list(range(6)), logits=False))
    assert not r.stored and r.reason == "already in the cache"
    assert ram.store_cache(filled(list(range(6)))).reason == "already in the cache"
    dst = blank()
    ram.load_into(dst, ram.lookup(list(range(6))))
    assert dst.logits is not None and dst.logits[0] == 6


def test_store_skips_empty_off_and_oversized_states():
    assert RamTier(8).store_cache(blank()).reason == "empty"
    assert RamTier(0).store_cache(filled([1])).reason == "disabled" and RamTier(0).lookup([1]) is None
    tiny = RamTier(1)
    big = KVCache(N_LAYER, 64, 64, 128)  # 128 rows of 2 x 2 x 4096 float16 values: 4 MiB
    big.append(list(range(128)), None)
    assert tiny.store_cache(big).reason == "over the limit" and tiny.nbytes == 0


def test_the_byte_budget_holds_and_the_least_recently_used_go_first():
    spilled = []
    ram = RamTier(1, spill=spilled.append)
    ram.limit_bytes = 3 * 20 * ROW_BYTES  # room for three 20-token states without logits
    states = [[i] * 20 for i in range(1, 5)]
    for s in states[:3]:
        ram.store_cache(filled(s, logits=False))
    ram.lookup(states[0])  # a use: state 2 is now the oldest
    ram.store_cache(filled(states[3], logits=False))
    assert ram.nbytes <= ram.limit_bytes
    assert [s.tokens for s in spilled] == [states[1]]
    assert ram.lookup(states[1]) is None and ram.lookup(states[0]).n_match == 20


def test_a_spilled_state_is_whole_and_its_rows_are_right():
    spilled = []
    ram = RamTier(8, spill=spilled.append)
    src = filled([1, 2, 3, 4, 5, 6])
    ram.store_cache(filled([1, 2, 3]))
    ram.store_cache(src)
    ram.flush()
    # the leaf first, then its parent as a state of its own (the disk tier finds it contained)
    assert [s.tokens for s in spilled] == [[1, 2, 3, 4, 5, 6], [1, 2, 3]]
    dst = blank()
    load_into(dst, spilled[0], 6)
    assert same_rows(dst, src, 6) and dst.logits[0] == 6 and ram.nbytes == 0


def test_storing_does_not_evict_the_prefix_it_extends():
    ram = RamTier(1)
    ram.limit_bytes = 30 * ROW_BYTES
    ram.store_cache(filled(list(range(20)), logits=False))
    r = ram.store_cache(filled(list(range(28)), logits=False))
    assert r.stored and r.n_new == 8 and ram.lookup(list(range(28))).n_match == 28


def test_without_a_byte_limit_the_token_limit_holds():
    ram = RamTier(-1, limit_tokens=50)
    for i in range(1, 5):
        ram.store_cache(filled([i] * 20, logits=False))
    assert ram.n_tokens <= 50 and ram.lookup([4] * 20).n_match == 20 and ram.lookup([1] * 20) is None


def test_load_copies_only_rows_past_the_shared_start():
    ram = RamTier(8)
    src = filled([1, 2, 3, 4, 5, 6])
    ram.store_cache(src)
    dst = filled([1, 2, 3, 9])
    for layer in range(dst.k.shape[0]):  # rows below start are left alone
        dst.write(layer, 0, np.full((3, dst.n_head_kv, dst.head_dim), 7.0), np.full((3, dst.n_head_kv, dst.head_dim), 7.0))
    ram.load_into(dst, ram.lookup([1, 2, 3, 4, 5, 6]), start=3)
    assert dst.tokens == [1, 2, 3, 4, 5, 6] and (dst.k[:, :3] == 7).all()
    assert np.array_equal(dst.k[:, 3:6], src.k[:, 3:6])
    with pytest.raises(ValueError):
        ram.load_into(filled([8, 8, 8]), ram.lookup([1, 2, 3]), start=3)


def test_a_hit_evicted_meanwhile_is_refused():
    ram = RamTier(8)
    ram.store_cache(filled([1, 2, 3]))
    hit = ram.lookup([1, 2, 3])
    ram.evict(10 ** 9)
    with pytest.raises(LookupError):
        ram.load_into(blank(), hit)


def test_llama_server_rules():
    assert update_cache_on_select(True, 1.0) and update_cache_on_select(False, 0.4)
    assert not update_cache_on_select(False, 0.5)
    assert prefer_stored(3, 4) and not prefer_stored(4, 4)
    assert RamTier().limit_bytes == 8192 * MiB and RamTier(-1).limit_bytes is None

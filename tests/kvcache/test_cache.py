"""KVCache bookkeeping: which changes keep the logits after its last token, and which drop them."""
import numpy as np
import pytest

from slotserve.kvcache.cache import KVCache


@pytest.fixture
def cache():
    c = KVCache(n_layer=2, n_head_kv=2, head_dim=4, n_ctx=16)
    c.append([1, 2, 3, 4], np.arange(5, dtype=np.float32))
    return c


def test_append_brings_its_logits(cache):
    assert cache.tokens == [1, 2, 3, 4] and cache.logits.tolist() == [0, 1, 2, 3, 4]
    cache.append([5], None)
    assert cache.logits is None


def test_truncating_to_the_same_length_keeps_the_logits(cache):
    cache.truncate(4)
    assert cache.logits is not None
    cache.truncate(3)
    assert cache.tokens == [1, 2, 3] and cache.logits is None


@pytest.mark.parametrize("change", [lambda c: c.clear(), lambda c: c.discard(1, 2),
                                    lambda c: c.import_state(c.export_state())])
def test_other_changes_drop_the_logits(cache, change):
    change(cache)
    assert cache.logits is None

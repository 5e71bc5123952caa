import numpy as np

from slotserve.kvcache import parallel
from slotserve.kvcache.parallel import PendingCopies, copy_in_parallel, widen_f16


def test_widen_f16_is_bit_exact_for_every_float16():
    half = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    out = np.empty(half.shape, np.float32)
    widen_f16(out, half)
    ref = half.astype(np.float32)
    finite = np.isfinite(ref)
    assert np.array_equal(out[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])


def test_copy_in_parallel_converts_rows_of_a_cache():
    rng = np.random.default_rng(0)
    dst = np.zeros((3, 10, 70_000), np.float32)  # 700k values a layer: more than one chunk
    src = [rng.standard_normal((10, 70_000)).astype(np.float16) for _ in range(3)]
    copy_in_parallel([(dst[i], s) for i, s in enumerate(src)])
    for i, s in enumerate(src):
        assert np.array_equal(dst[i], s.astype(np.float32))


def test_pending_copies_between_steps_go_a_piece_at_a_time_and_end_whole(monkeypatch):
    monkeypatch.setattr(parallel, "PIECE_BYTES", 4096)  # 4 rows of 256 float32 values
    rng = np.random.default_rng(3)
    src = [rng.standard_normal((10, 256)).astype(np.float16) for _ in range(3)]
    dst = np.zeros((3, 10, 256), np.float32)
    copies = PendingCopies([(dst[i], s) for i, s in enumerate(src)])
    rounds = 0
    while copies:
        copies.copy(until=0.0)  # a deadline already passed: two pieces a round
        rounds += 1
        assert rounds == 1 or dst.any()
    assert rounds == 5  # three pairs of three pieces each (4 + 4 + 2 rows), two pieces a round
    np.testing.assert_array_equal(dst, np.stack(src).astype(np.float32))

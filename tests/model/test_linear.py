"""Linear picks a different BLAS strategy by row count; every one must compute x @ W.T."""
import numpy as np
import pytest

from slotserve.model.forward import Linear, attention


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 17, 32, 33, 64])
@pytest.mark.parametrize("shape", [(1000, 96), (300, 2048)])  # several blocks; a wide input (few rows per block)
@pytest.mark.parametrize("small_kernels", [True, False])  # both plans, whichever kernels this machine's BLAS runs
def test_every_row_count_computes_the_same_product(n, shape, small_kernels, monkeypatch):
    # small blocks, so the blocked and skinny paths really walk several and share them between threads
    monkeypatch.setattr(Linear, "BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(Linear, "SMALL_MNK", 20_000)
    rng = np.random.default_rng(n)
    w = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((n, shape[1]), dtype=np.float32)
    monkeypatch.setattr("slotserve.model.forward.has_small_matrix_kernels", lambda: small_kernels)
    got = Linear(w)(x)
    assert got.shape == (n, shape[0]) and got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n_head, n_kv", [(8, 8), (8, 4), (8, 1)])
def test_single_query_attention_equals_the_general_path(n_head, n_kv):
    """The one-position path (einsum) against the batched-matmul path, through a two-token call
    whose last row sees every key, as the single position does."""
    rng = np.random.default_rng(n_head * 10 + n_kv)
    n, hd = 37, 16
    q = rng.standard_normal((2, n_head, hd), dtype=np.float32)
    k = rng.standard_normal((n_kv, n, hd), dtype=np.float32)
    v = rng.standard_normal((n_kv, n, hd), dtype=np.float32)
    mask = np.zeros((2, n), np.float32)
    mask[0, -1] = -np.inf  # the first query may not see the last key
    general = attention(q, k, v, mask)[1]
    single = attention(q[1:], k, v, None, cold_cache=True)[0]
    np.testing.assert_allclose(single, general, rtol=1e-5, atol=1e-6)

"""BLAS's own threads, held to one around products that bring their own threads.

Linear's skinny path cuts a weight into hundreds of small blocks and shares them between two Python
threads. Each block is far too small to be worth splitting again, yet this OpenBLAS build (Haswell kernels)
hands every one to its worker threads too: on a quiet machine that costs a little, on a busy one each
hand-off waits for a time slice. Measured on the 2 shared cores with other processes using ~1.5 of them,
TinyLlama's gate/up product (11264 x 2048): 30 rows 2,322 ms with BLAS's two threads, 96 ms with one;
4 rows 318 -> 59 ms. threadpoolctl finds the BLAS numpy loaded and sets its thread count (15 us a call).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache

import numpy as np  # noqa: F401 (loads the BLAS threadpoolctl must find)
from threadpoolctl import ThreadpoolController

_blas = ThreadpoolController().select(user_api="blas")
# OpenBLAS's kernel sets with a small-matrix path (operands read in place: no packing, no threads)
_SMALL_MATRIX_ARCHS = {"SkylakeX", "Cooperlake", "SapphireRapids"}


def one_thread() -> AbstractContextManager:
    """A context in which BLAS calls run on the calling thread alone."""
    return _blas.limit(limits=1) if _blas else nullcontext()


@cache
def has_small_matrix_kernels() -> bool:
    """Whether numpy's OpenBLAS runs kernels with a small-matrix path (its AVX-512 sets). Which set it runs
    is its choice at load, from the CPU or OPENBLAS_CORETYPE."""
    return any(lib.get("architecture") in _SMALL_MATRIX_ARCHS for lib in _blas.info())

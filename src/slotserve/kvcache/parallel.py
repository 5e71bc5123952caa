"""Bulk array copies on both cores, for saving and restoring large caches."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

_copier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="slotserve-kvcopy")


def copy_in_parallel(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """np.copyto for many (dst, src) pairs on two threads. numpy's float16 casts run one scalar at a
    time but release the GIL, so a second core halves the time a save or restore spends in them."""
    def run(part):
        for dst, src in part:
            np.copyto(dst, src, casting="unsafe")

    if len(pairs) < 2:
        run(pairs)
        return
    for job in [_copier.submit(run, pairs[i::2]) for i in range(2)]:
        job.result()

"""Prompt-lookup drafts: guess the next tokens by finding the recent n-gram earlier in the context.

Decoding one token reads every weight once; verifying a draft of k tokens in the same forward reads
them once too, and greedy verification accepts only tokens the model would have chosen anyway, so
the output is unchanged while accepted drafts come almost for free.
"""
from __future__ import annotations

import numpy as np


def find_draft(context: list[int], max_draft: int, ngram_max: int = 3, ngram_min: int = 2) -> list[int]:
    """Tokens that followed the latest earlier occurrence of the context's last n-gram (longest n first)."""
    if max_draft <= 0 or len(context) <= ngram_min:
        return []
    arr = np.asarray(context, dtype=np.int64)
    for n in range(min(ngram_max, len(context) - 1), ngram_min - 1, -1):
        tail = arr[-n:]
        # candidate starts: every position whose window of n tokens equals the tail, excluding the tail itself
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # most recent occurrence: the likeliest continuation
            return arr[start:start + max_draft].tolist()
    return []

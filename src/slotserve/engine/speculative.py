"""Prompt-lookup drafts: guess the next tokens by finding the recent n-gram earlier in the context.

Decoding one token reads every weight once; verifying a draft of k tokens in the same forward reads
them once too, and greedy verification accepts only tokens the model would have chosen anyway, so
the output is unchanged while accepted drafts come almost for free.
"""
from __future__ import annotations

from array import array


def find_draft(context: list[int], max_draft: int, ngram_max: int = 3, ngram_min: int = 2) -> list[int]:
    """Tokens that followed the latest earlier occurrence of the context's last n-gram (longest n first)."""
    if max_draft <= 0 or len(context) <= ngram_min:
        return []
    # the search runs every decode step: bytes.rfind over packed int32s is a C loop, not a Python one
    data = array("i", context).tobytes()
    for n in range(min(ngram_max, len(context) - 1), ngram_min - 1, -1):
        tail = data[-4 * n:]
        end = 4 * (len(context) - 1)  # occurrences must end before the last token: not the tail itself
        while (at := data.rfind(tail, 0, end)) != -1:
            if at % 4 == 0:  # a match on token boundaries
                start = at // 4 + n
                return context[start:start + max_draft]
            end = at + 4 * n - 1  # misaligned: look further left
    return []

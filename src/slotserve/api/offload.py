"""Work a request brings with it (decoding its JSON, rendering and tokenizing its prompt) kept off the event loop
when it is big, so that one 50 MB prompt cannot stop /health and every other client.

A thread is enough, though tokenizing is pure Python and holds the GIL: the interpreter hands the GIL over every
5 ms (sys.getswitchinterval), so the event loop still gets its turns between the tokenizer's slices, and numpy's
BLAS (the engine's forward) releases the GIL anyway. What a thread cannot split is one long C call holding the
GIL: json.loads of a 50 MB body is one (~0.2 s for a string prompt; 1.5-5 s for an array of 10 M token ids,
which fields._shared_numbers breaks up with a Python hook per number).

Small bodies are handled inline (the hop to a thread would cost more than the work); big ones go to a pool of
BIG_WORKERS threads, so that at most that many big requests are expanded in memory at once.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
INLINE_BYTES = 64 << 10  # a body up to this size is handled on the loop: a few ms of work at worst
BIG_WORKERS = 2
_big = ThreadPoolExecutor(max_workers=BIG_WORKERS, thread_name_prefix="slotserve-parse")


async def off_loop(size: int, fn: Callable[[], T]) -> T:
    """fn() for a request body of `size` bytes: inline when it is small, else on the big-request pool."""
    if size <= INLINE_BYTES:
        return fn()
    return await asyncio.get_running_loop().run_in_executor(_big, fn)

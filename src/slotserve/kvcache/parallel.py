"""Bulk array copies for saving and restoring large caches: on both cores, float16 widened fast.

numpy converts float16 to float32 one value at a time (about 1.7 ns each); four integer and float
operations on cache-sized chunks do the same exactly in a third of the time, and they release the GIL,
so the two halves of a copy run on two cores. (The other way needs no arithmetic: an f16 cache keeps
its float16 rows beside the float32 ones, see KVCache.)
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import background

_copier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="slotserve-kvcopy")
_background_copier = background.executor(2, "slotserve-kvcopy-bg")  # for copies a background thread asks for
_INLINE_BYTES = 4 << 20  # below this a copy takes less than handing it to two threads and back (~0.3 ms each)
_CHUNK = 1 << 19  # values per step: temporaries of 2 MB stay in L3; fewer, longer steps hold the GIL less (measured)
_TWO_POW_112 = np.float32(2.0 ** 112)  # float32 exponent bias 127 minus float16's 15
_SIGN_EXP_MANT = np.int32(-0x70002000)  # 0x8FFFE000: bit 31, and the 15 bits a float16 shifts into 27..13
_F16_SPECIAL = 65536.0
_TWO_POW_MINUS_112 = np.float32(2.0 ** -112)
_F16_SIGN, _F16_EXP_MANT = np.int32(0x8000), np.int32(0x7FFF)  # finite float16 values widen below this in magnitude, inf and nan at or above it


def widen_f16(dst: np.ndarray, src: np.ndarray) -> None:
    """dst (float32) = src (float16), bit-exact, inf and nan included.

    A float16 sign-extended to 32 bits and shifted left by 13 has its sign in bit 31 and its exponent
    and mantissa in float32's places, under three stray copies of the sign (bits 30..28) that the mask
    clears; read as a float32 that is 2^-112 times the value (subnormals too, since float16 subnormals
    become float32 subnormals), so one multiplication by 2^112 finishes the job, sign included. inf and
    nan come out as finite values of 2^16 or more, which no finite float16 reaches: fixed up apart."""
    bits, out = src.view(np.int16).reshape(-1), dst.reshape(-1)
    word = np.empty(min(_CHUNK, bits.size), np.int32)
    for at in range(0, bits.size, _CHUNK):
        h = bits[at:at + _CHUNK]
        w, o = word[:h.size], out[at:at + h.size]
        np.copyto(w, h)
        np.left_shift(w, 13, out=w)
        np.bitwise_and(w, _SIGN_EXP_MANT, out=w)
        np.multiply(w.view(np.float32), _TWO_POW_112, out=o)
        if o.max() >= _F16_SPECIAL or o.min() <= -_F16_SPECIAL:
            _fix_specials(o, h.view(np.uint16))


def _fix_specials(out: np.ndarray, h: np.ndarray) -> None:
    """inf and nan: all-ones exponent, the float16 mantissa and sign moved to float32's places."""
    special = (h & 0x7C00) == 0x7C00
    hs = h[special].astype(np.uint32)
    out.view(np.uint32)[special] = (hs & 0x8000) << 16 | (hs & 0x3FF) << 13 | 0x7F800000


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    if src.flags.c_contiguous and dst.flags.c_contiguous and dst.dtype == np.float32 and src.dtype == np.float16:
        widen_f16(dst, src)
        return
    np.copyto(dst, src, casting="unsafe")


def copy_in_parallel(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy each (dst, src) pair, converting dtypes, split over two threads."""
    def run(part):
        for dst, src in part:
            with background.turn():  # a background thread's copies: not while a step runs
                _copy(dst, src)

    in_background = background.in_background()
    if in_background:  # turns short enough not to hold up the next step
        pairs = [piece for dst, src in pairs for piece in _pieces(dst, src)]
    # a background copy while slots generate takes one core: the engine wakes up on the other at the end
    # of its lend (with both taken, it woke 0.75 ms late at the median, 0.1-0.2 ms with one)
    if len(pairs) < 2 or sum(src.nbytes for _, src in pairs) < _INLINE_BYTES or (
            in_background and background.GATE.stepping):
        run(pairs)
        return
    pool = _background_copier if in_background else _copier
    for job in [pool.submit(run, pairs[i::2]) for i in range(2)]:
        job.result()


PIECE_BYTES = 1 << 20  # copies between or beside steps go in pieces of rows this large: ~0.2-0.4 ms each


def _piece_rows(dst: np.ndarray, src: np.ndarray) -> int:
    """How many rows of a (not 0-d) pair make a piece."""
    return max(1, PIECE_BYTES * len(dst) // max(dst.nbytes, src.nbytes, 1))


def _pieces(dst: np.ndarray, src: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    if dst.ndim == 0:
        return [(dst, src)]
    rows = _piece_rows(dst, src)
    return [(dst[i:i + rows], src[i:i + rows]) for i in range(0, len(dst), rows)]


class PendingCopies:
    """(dst, src) pairs the engine copies a few pieces at a time between its steps (a save's rows into its
    file bytes, which must be taken before the slot goes on)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]):
        self.pairs = list(pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def copy(self, until: float = float("inf")) -> None:
        """Copy the pairs: all of them (on two threads), or two pieces at a time until perf_counter() has
        passed `until`, at least two."""
        if until == float("inf"):
            take, self.pairs = self.pairs, []
            copy_in_parallel(take)
            return
        while self.pairs:
            take = [self._piece()]
            if self.pairs:
                take.append(self._piece())
            copy_in_parallel(take)
            if time.perf_counter() >= until:
                return

    def _piece(self) -> tuple[np.ndarray, np.ndarray]:
        """The first rows of the last pair, the rest left for later."""
        dst, src = self.pairs.pop()
        if dst.ndim and len(dst) > (rows := _piece_rows(dst, src)):
            self.pairs.append((dst[rows:], src[rows:]))
            return dst[:rows], src[:rows]
        return dst, src

    def clear(self) -> None:
        self.pairs.clear()

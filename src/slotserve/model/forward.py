"""The LLaMA forward pass in numpy, over any number of sequences at once.

All tokens of a call go through the weight matrices together (one BLAS product per projection);
only attention is done per sequence, each against its own KV cache. The same function serves
prompt chunks, single-token decode steps of many slots, and speculative verification.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..kvcache.cache import KVCache
from .blas import has_small_matrix_kernels, one_thread
from .hparams import HParams
from .loader import Weights


@dataclass
class Segment:
    """Tokens to append to one sequence's cache, at positions cache.n_past onwards."""
    cache: KVCache
    tokens: list[int]
    all_logits: bool = False  # logits for every token (to verify drafts), not only the last
    logits: np.ndarray | None = field(default=None, init=False)  # (rows, n_vocab): 1 row, or 1 per token


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    scale = np.einsum("ij,ij->i", x, x)
    scale /= np.float32(x.shape[1])
    scale += np.float32(eps)
    np.sqrt(scale, out=scale)
    np.reciprocal(scale, out=scale)
    return (x * scale[:, None]) * weight


def swiglu(gate_up: np.ndarray, n_ff: int) -> np.ndarray:
    """silu(gate) * up for gate_up = [gate | up], in one new array: gate / (1 + exp(-gate)) * up, the
    same float32 operations in the same order as the three-temporary expression, without its temporaries
    (512 rows of TinyLlama's 5,632: 11.5 MB each)."""
    gate, up = gate_up[:, :n_ff], gate_up[:, n_ff:]
    out = np.negative(gate)
    np.exp(out, out=out)
    out += np.float32(1.0)
    np.divide(gate, out, out=out)
    out *= up
    return out


class RopeTable:
    """Each position's rotation, as unit complex numbers, grown on demand.

    ggml builds the angles by repeated float32 multiplication (theta *= base^(-2/n_rot)), not by pow;
    the same cumulative product here keeps our angles bit-identical to its. Llama 3.1's rope_freqs.weight
    (freq_factors) divides each pair's angle, after the product, as ggml's rope cache does.
    """

    def __init__(self, n_rot: int, freq_base: float, freq_factors: np.ndarray | None = None):
        self.n_rot = n_rot
        self.scale = np.float32(freq_base) ** np.float32(-2.0 / n_rot)
        self.freq_factors = None if freq_factors is None else np.asarray(freq_factors, np.float32)
        self.turns = np.zeros((0, n_rot // 2), np.complex64)

    def _grow(self, n: int) -> None:
        n = max(n, 2 * len(self.turns), 256)
        factors = np.full((n, self.n_rot // 2), self.scale, np.float32)
        factors[:, 0] = np.arange(n, dtype=np.float32)
        theta = np.cumprod(factors, axis=1, dtype=np.float32)
        if self.freq_factors is not None:
            theta /= self.freq_factors
        self.turns = (np.cos(theta) + 1j * np.sin(theta)).astype(np.complex64)

    def angles(self, pos: np.ndarray) -> np.ndarray:
        """The rotations of these positions, shaped (T, 1, n_rot/2) to broadcast over heads."""
        if pos.max() >= len(self.turns):
            self._grow(int(pos.max()) + 1)
        return self.turns[pos][:, None, :]

    def rotate(self, x: np.ndarray, turns: np.ndarray) -> None:
        """Rotate adjacent pairs (llama.cpp's "normal" rope) of x (T, n_heads, head_dim) in place.

        A pair (x0, x1) read as the complex number x0 + i*x1 times cos + i*sin is exactly
        (x0*cos - x1*sin, x0*sin + x1*cos): one multiplication instead of six array operations."""
        x[..., :self.n_rot].view(np.complex64)[...] *= turns


# the second thread of the skinny products and of prefill attention: it and the engine thread share the blocks
_helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slotserve-linear")


def on_two_threads(work: Callable[[], None]) -> None:
    """Run `work` on this thread and the helper at once, BLAS held to one thread in each (the two threads
    are the parallelism: BLAS must not split their blocks again). Both draw blocks from one iterator
    (next() is atomic under the GIL), so neither waits long for the other at the end, as with fixed
    halves (measured: 11% of a step)."""
    with one_thread():
        other = _helper.submit(work)
        work()
        other.result()


class Linear:
    """y = x @ W.T for a weight W (out, in), with the BLAS call that reads W fastest for x's row count.

    Decoding is bound by reading the weights, and OpenBLAS's general sgemm packs W first, moving 2-3x
    its bytes. So: one row, a plain matrix-vector product. A few rows, W walked in blocks that stay in
    cache, one matrix-vector product per row and block. Up to MAX_SKINNY_ROWS (batched slots, speculative
    drafts), with OpenBLAS's AVX-512 kernels, W cut into blocks small enough (rows x n x in <= SMALL_MNK)
    for their small-matrix path, which reads its operands in place, without packing or threads; two
    threads share the blocks, BLAS releasing the GIL. More rows (prompts), or kernels without that path:
    sgemm. Measured over the 110M shape's weights, 2 cores, ms for all products of one step:
    - SkylakeX kernels (AMD Zen 5): sgemm 4 rows 31-33, 8 rows 30-35, 16 rows 35-39; blocks 16-24, 19-20, 25-29.
    - Haswell kernels (the same CPU, OPENBLAS_CORETYPE=Haswell): blocks 4 and 8 rows 30-33; sgemm 29-35,
      25-30; row by row 19-22, 29-31. Hence row by row up to MAX_GEMV_ROWS_NO_SMALL, then sgemm.
    """

    BLOCK_BYTES = 2 << 20
    MAX_GEMV_ROWS = 3
    MAX_GEMV_ROWS_NO_SMALL = 7
    MAX_SKINNY_ROWS = 32
    # OpenBLAS (SkylakeX kernels, multithreaded build) takes its small-matrix path up to M*N*K = 1e6; the
    # margin keeps every block under it, since a larger one would start BLAS threads under ours.
    SMALL_MNK = 900_000

    def __init__(self, w: np.ndarray):
        self.w = w
        self.small_kernels = has_small_matrix_kernels()
        self.max_gemv_rows = self.MAX_GEMV_ROWS if self.small_kernels else self.MAX_GEMV_ROWS_NO_SMALL
        step = max(1, self.BLOCK_BYTES // (w.shape[1] * w.itemsize))
        self.blocks = [(i, w[i:i + step]) for i in range(0, w.shape[0], step)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n == 1:
            return (self.w @ x[0])[None, :]
        if n <= self.max_gemv_rows:
            out = np.empty((n, self.w.shape[0]), np.float32)
            for start, block in self.blocks:
                for row in range(n):
                    np.dot(block, x[row], out=out[row, start:start + block.shape[0]])
            return out
        if n > self.MAX_SKINNY_ROWS or not self.small_kernels:
            return x @ self.w.T
        return self._skinny(x)

    def _skinny(self, x: np.ndarray) -> np.ndarray:
        w, xt = self.w, np.ascontiguousarray(x.T)
        out_t = np.empty((w.shape[0], x.shape[0]), np.float32)
        step = max(8, self.SMALL_MNK // (x.shape[0] * w.shape[1]))
        starts = iter(range(0, w.shape[0], step))

        def work() -> None:
            for i in starts:
                np.dot(w[i:i + step], xt, out=out_t[i:i + step])

        if step < w.shape[0]:
            on_two_threads(work)
        else:  # a single block (small models): waking the helper would cost more than the product
            with one_thread():
                work()
        return np.ascontiguousarray(out_t.T)  # callers reshape rows into heads: rows must be contiguous


def causal_mask(n_past: int, T: int) -> np.ndarray:
    """(T, n_past + T) additive mask: 0 where a query may look, -inf at keys after it."""
    future = np.arange(n_past + T)[None, :] > (n_past + np.arange(T))[:, None]
    return np.where(future, np.float32(-np.inf), np.float32(0))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None,
              cold_cache: bool = False) -> np.ndarray:
    """Causal grouped-query attention of one sequence.

    q: (T, n_head, hd) for the last T positions; k, v: (n_head_kv, n, hd); mask: causal_mask(n - T, T)
    (None for T == 1, where every key is visible). Returns (T, n_head * hd). cold_cache: k and v come
    from memory rather than the CPU caches (a big model), which favours another single-query path.
    """
    T, n_head, hd = q.shape
    n_kv, n = k.shape[0], k.shape[1]
    group = n_head // n_kv
    if T == 1 and cold_cache:
        return _attention_one(q.reshape(n_kv, group, hd), k, v).reshape(1, n_head * hd)
    if mask is not None and T > PREFILL_BLOCK:
        return _attention_blocks(q, k, v, mask)
    # rows ordered (group, T) within each KV head so one batched matmul per KV head covers its queries
    qg = q.reshape(T, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * T, hd)
    scores = np.matmul(qg, k.transpose(0, 2, 1))
    scores *= np.float32(1.0 / np.sqrt(hd))  # on the scores, as ggml does: scaling q first rounds differently
    if mask is not None:
        scores.reshape(n_kv, group, T, n)[...] += mask
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v)  # (n_kv, group*T, hd)
    return out.reshape(n_kv, group, T, hd).transpose(2, 0, 1, 3).reshape(T, n_head * hd)


PREFILL_BLOCK = 64  # query positions a block of a long prompt's attention takes (see _attention_blocks)


def _attention_blocks(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """attention() of many query positions, a block of PREFILL_BLOCK queries of one KV head at a time,
    the blocks shared between two threads. A block's scores (group x 64 x its keys) stay in the CPU
    caches through the softmax's five passes, where the whole (n_kv, group x T, n) array went to memory
    and back each time on one core; and a block skips the keys after its last query, which the causal
    mask hides (half of them, over a whole prompt). Each score is the same arithmetic as the one-piece
    path's; sums over a row leave the masked terms (exact zeros) out, which may round the last bit
    differently (4.8e-7 at most, measured). TinyLlama's shape, 512-token prompt, one layer: 22.7 -> 7.4 ms."""
    T, n_head, hd = q.shape
    n_kv, n = k.shape[0], k.shape[1]
    group, n_past = n_head // n_kv, n - T
    qg = q.reshape(T, n_kv, group, hd).transpose(1, 2, 0, 3)  # (n_kv, group, T, hd), a view
    out = np.empty((T, n_kv, group, hd), np.float32)
    scale = np.float32(1.0 / np.sqrt(hd))
    blocks = iter([(h, a) for h in range(n_kv) for a in range(0, T, PREFILL_BLOCK)])

    def work() -> None:
        for h, a in blocks:
            b = min(a + PREFILL_BLOCK, T)
            end = n_past + b  # keys after the block's last query are masked for all of its queries
            scores = np.matmul(qg[h, :, a:b], k[h, :end].T)  # (group, b - a, end)
            scores *= scale
            scores += mask[a:b, :end]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[a:b, h] = np.matmul(scores, v[h, :end]).transpose(1, 0, 2)

    on_two_threads(work)
    return out.reshape(T, n_head * hd)


def _attention_one(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Attention of a single query position: q (n_kv, group, hd), k and v (n_kv, n, hd) views of the
    cache. einsum walks the cache rows in memory order, every head at once, where a matmul per head
    strides through them once per head. That wins only when the rows come from memory: in a step of
    the 110M model, whose weights stream through the caches, 6.4 instead of 9.4 ms over 12 layers x
    1,500 positions; with rows already in cache, a matmul per head is 2-3x faster."""
    scores = np.einsum("kjd,kgd->kgj", k, q)
    scores *= np.float32(1.0 / np.sqrt(q.shape[-1]))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.einsum("kgj,kjd->kgd", scores, v)


class Llama:
    # Weights read per step beyond this evict the KV rows from the CPU caches before attention reads them
    COLD_CACHE_BYTES = 64 << 20

    def __init__(self, hparams: HParams, weights: Weights):
        self.hp, self.w = hparams, weights
        self.rope = RopeTable(hparams.n_rot, hparams.rope_freq_base, weights.rope_freqs)
        self.linears = [(Linear(l.wqkv), Linear(l.wo), Linear(l.w_gate_up), Linear(l.w_down)) for l in weights.layers]
        self.output = Linear(weights.output)
        streamed = sum(lin.w.nbytes for layer in self.linears for lin in layer) + self.output.w.nbytes
        self.cold_cache = streamed > self.COLD_CACHE_BYTES

    def warm_up(self) -> None:
        """One pass of each product path before the first request (llama-server's --warmup): OpenBLAS starts
        its threads and the skinny path its helper thread, mapped weight pages not yet in memory are read,
        and the first request pays none of it. A throwaway cache: no slot sees these tokens."""
        token = self.hp.bos_id if self.hp.bos_id is not None else 0
        cache = self.new_cache(1 + Linear.MAX_GEMV_ROWS + 1, "f32")
        for n in (1, Linear.MAX_GEMV_ROWS + 1):  # one row: gemv; four: the blocked small-matrix path
            self.forward([Segment(cache, [token] * n)])

    def new_cache(self, n_ctx: int, kv_type: str = "f16") -> KVCache:
        hp = self.hp
        return KVCache(hp.n_layer, hp.n_head_kv, hp.head_dim, n_ctx, kv_type)

    def shift_cache(self, cache: KVCache, n_keep: int, n_discard: int) -> None:
        """Context shift: forget n_discard tokens after the first n_keep, move the rest down.

        RoPE angles add up, so the moved keys are rotated back by n_discard positions in place, as
        llama.cpp does, rather than recomputed."""
        cache.discard(n_keep, n_discard)
        back = np.conj(self.rope.angles(np.array([n_discard]))[0])  # the inverse rotation
        keys = cache.k[:, n_keep:cache.n_past]  # (n_layer, n, n_head_kv * head_dim)
        n_layer, n = keys.shape[:2]
        moved = keys.reshape(n_layer * n, self.hp.n_head_kv, self.hp.head_dim)  # a copy: keys is strided
        self.rope.rotate(moved, back)
        cache.rewrite_keys(n_keep, moved.reshape(keys.shape))

    def forward(self, segments: list[Segment]) -> list[Segment]:
        """Evaluate every segment's tokens, append them to its cache and set segment.logits.

        segment.logits is always 2-D: (1, n_vocab) for the last token, or (T, n_vocab) with all_logits.
        """
        hp, w = self.hp, self.w
        for s in segments:
            if not s.tokens:
                raise ValueError("a segment needs at least one token")
            if s.cache.n_past + len(s.tokens) > s.cache.n_ctx:
                raise ValueError(f"{s.cache.n_past + len(s.tokens)} tokens do not fit in a context of {s.cache.n_ctx}")
        tokens = np.concatenate([np.asarray(s.tokens, dtype=np.int64) for s in segments])
        pos = np.concatenate([np.arange(s.cache.n_past, s.cache.n_past + len(s.tokens)) for s in segments])
        ends = np.cumsum([len(s.tokens) for s in segments])
        starts = ends - [len(s.tokens) for s in segments]
        T, d, kv, hd = len(tokens), hp.n_embd, hp.n_embd_kv, hp.head_dim

        turns = self.rope.angles(pos)
        masks = [causal_mask(s.cache.n_past, len(s.tokens)) if len(s.tokens) > 1 else None for s in segments]
        x = w.tok_embd[tokens]
        for li, layer in enumerate(w.layers):
            wqkv, wo, w_gate_up, w_down = self.linears[li]
            h = rms_norm(x, layer.attn_norm, hp.rms_eps)
            qkv = wqkv(h)  # contiguous rows: the reshapes below are views, so rope rotates qkv itself
            # q and k sit side by side in qkv: one rotation covers every query and key head
            self.rope.rotate(qkv[:, :d + kv].reshape(T, hp.n_head + hp.n_head_kv, hd), turns)
            q = qkv[:, :d].reshape(T, hp.n_head, hd)
            k = qkv[:, d:d + kv].reshape(T, hp.n_head_kv, hd)
            v = qkv[:, d + kv:].reshape(T, hp.n_head_kv, hd)
            attn = np.empty((T, d), np.float32)
            for s, a, b, mask in zip(segments, starts, ends, masks):
                n_past = s.cache.n_past
                s.cache.write(li, n_past, k[a:b], v[a:b])
                k_all, v_all = s.cache.view(li, n_past + (b - a))
                attn[a:b] = attention(q[a:b], k_all, v_all, mask, self.cold_cache)
            x += wo(attn)
            h = rms_norm(x, layer.ffn_norm, hp.rms_eps)
            gate_up = w_gate_up(h)
            x += w_down(swiglu(gate_up, hp.n_ff))

        rows = np.concatenate([np.arange(a, b) if s.all_logits else [b - 1]
                               for s, a, b in zip(segments, starts, ends)])
        logits = self.output(rms_norm(x[rows], w.output_norm, hp.rms_eps))
        i = 0
        for s in segments:
            n = len(s.tokens) if s.all_logits else 1
            s.logits = logits[i:i + n]
            s.cache.append(s.tokens, logits[i + n - 1])
            i += n
        return segments

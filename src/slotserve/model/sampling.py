"""Token sampling: llama-server's default sampler chain and the probabilities it reports.

Chain (common/sampling.cpp, default order): logit_bias -> penalties -> top_k -> typical_p -> top_p -> min_p
-> temperature -> dist. Every filter works on temperature-1 logits; temperature only reshapes what survives.
temp <= 0 keeps the chain but the temperature step leaves only the best survivor, i.e. greedy.
"""
from __future__ import annotations

import math
import random
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

_STRIDE = 16  # subsample stride for the top-k threshold (see _top_ids)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings; defaults are llama-server's (common_params_sampling)."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1 = random (llama.cpp's LLAMA_DEFAULT_SEED, 0xFFFFFFFF)
    n_probs: int = 0
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()
    post_sampling_probs: bool = False


class Mt19937Draws:
    """The uniform numbers llama.cpp's dist sampler draws: std::uniform_real_distribution<double>(0, 1) over
    a std::mt19937 seeded with the request's seed. Python's random.Random is the same MT19937; only its
    seeding differs, so the state std::mt19937::seed (init_genrand) makes is set directly. libstdc++'s
    generate_canonical builds each double from two 32-bit outputs, the first as the low word."""

    def __init__(self, seed: int):
        mt = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self._rng = random.Random()
        self._rng.setstate((3, (*mt, 624), None))  # 624: the next output regenerates the block, as after seed()

    def next(self) -> float:
        low = self._rng.getrandbits(32)
        u = (low + self._rng.getrandbits(32) * 2.0**32) / 2.0**64
        return u if u < 1.0 else math.nextafter(1.0, 0.0)


def _softmax(v: np.ndarray) -> np.ndarray:
    # float64: the filters compare cumulative sums against thresholds, keep rounding away from the boundary
    e = np.exp(v.astype(np.float64) - np.max(v))
    return e / e.sum()


def _top_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first; ties go to the lower index, as np.argmax does."""
    cand = np.arange(x.size)
    if k < x.size:
        # A strided subsample's k-th largest value cannot exceed the full array's, so filtering by it keeps
        # every true top-k entry while argpartition then runs on a few hundred values instead of 32000.
        sub = x[::_STRIDE]
        if sub.size > k:
            cand = np.flatnonzero(x >= np.partition(sub, sub.size - k)[sub.size - k])
        if cand.size > k:
            vals = x[cand]
            kth = np.partition(vals, vals.size - k)[vals.size - k]
            above = cand[vals > kth]
            cand = np.sort(np.concatenate([above, cand[vals == kth][: k - above.size]]))
    return cand[np.argsort(-x[cand], kind="stable")]


class Sampler:
    """One request's sampler: the penalty window, the RNG, and the chain applied to each step's logits."""

    def __init__(self, params: SamplingParams, n_vocab: int, eog_ids: Sequence[int] = ()):
        self.params = params
        self.n_vocab = n_vocab
        biases = list(params.logit_bias)
        if params.ignore_eos:  # llama-server appends a -inf bias per end-of-generation token
            biases += [(int(t), -math.inf) for t in eog_ids]
        biases = [(t, b) for t, b in biases if 0 <= t < n_vocab]  # out-of-vocab ids are dropped, not errors
        self._bias_ids = np.array([t for t, _ in biases], dtype=np.int64)
        self._bias_vals = np.array([b for _, b in biases], dtype=np.float32)
        p = params
        self._last_n = max(p.repeat_last_n, 0)
        self._penalize = self._last_n > 0 and not (
            p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0)
        self._window: deque[int] = deque()
        self._counts: dict[int, int] = {}
        # a negative seed (llama.cpp's LLAMA_DEFAULT_SEED) means a random one, as there
        self._draws = Mt19937Draws(secrets.randbits(32) if p.seed < 0 else p.seed)
        self._last: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None  # see sample()

    # -- penalty window ---------------------------------------------------------------------------------

    def accept(self, token: int) -> None:
        """Record a token in the penalty window. llama-server feeds every prompt token here before the
        first sample (server_slot::init_sampler), then each generated token."""
        if not self._penalize or token < 0:  # negative = LLAMA_TOKEN_NULL (media placeholders), skipped
            return
        if len(self._window) >= self._last_n:
            old = self._window.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        self._window.append(token)
        self._counts[token] = self._counts.get(token, 0) + 1

    def accept_prompt(self, tokens: Sequence[int]) -> None:
        """accept() for a whole prompt; only its last repeat_last_n tokens can still be in the window."""
        if self._penalize:
            for t in [t for t in tokens if t >= 0][-self._last_n:]:
                self.accept(int(t))

    # -- the chain ----------------------------------------------------------------------------------------

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        """A float32 copy of the logits after logit_bias and the repetition penalties."""
        p = self.params
        x = np.array(logits, dtype=np.float32)  # always a copy: the caller's array is left alone
        if self._bias_ids.size:
            np.add.at(x, self._bias_ids, self._bias_vals)  # sequential, so duplicate ids add up as in llama.cpp
        if self._penalize and self._counts:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            cnt = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            v = x[ids]
            rep = np.float32(p.repeat_penalty)
            # dividing a negative logit would make it *more* likely, so llama.cpp multiplies those instead
            v = np.where(v <= 0, v * rep, v / rep)
            v -= cnt * np.float32(p.frequency_penalty) + np.float32(p.presence_penalty)
            x[ids] = v
        return x

    def _candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, temperature-1 logits) that survive top_k, typical_p, top_p and min_p."""
        p = self.params
        x = self._adjusted(logits)
        if 0 < p.top_k < x.size:
            ids = _top_ids(x, p.top_k)
            vals, ranked = x[ids], True
        else:
            ids, vals, ranked = np.arange(x.size), x, False
        if p.typical_p < 1.0:
            probs = _softmax(vals)
            with np.errstate(divide="ignore"):
                nlp = -np.log(probs)
            entropy = float(np.sum(probs[probs > 0] * nlp[probs > 0]))
            order = np.argsort(np.abs(nlp - entropy), kind="stable")
            cut = int(np.searchsorted(np.cumsum(probs[order]), p.typical_p, side="right")) + 1  # first cum > p
            ids, vals, ranked = ids[order[:cut]], vals[order[:cut]], False
        if p.top_p < 1.0:
            ids, vals = self._top_p(ids, vals, ranked)
        if p.min_p > 0.0:
            keep = vals >= np.max(vals) + np.float32(math.log(p.min_p))  # p_i >= min_p * p_max, in logit space
            ids, vals = ids[keep], vals[keep]
        return ids, vals

    def _top_p(self, ids: np.ndarray, vals: np.ndarray, ranked: bool) -> tuple[np.ndarray, np.ndarray]:
        top_p = self.params.top_p
        e = np.exp(vals.astype(np.float64) - np.max(vals))
        total = e.sum()
        # Like llama.cpp: on a large unsorted set first try the best 256, which nearly always reach top_p.
        order = None if ranked else _top_ids(vals, 256 if vals.size > 1024 else vals.size)
        cum = np.cumsum(e if order is None else e[order]) / total
        if cum[-1] < top_p and order is not None and order.size < vals.size:
            order = _top_ids(vals, vals.size)
            cum = np.cumsum(e[order]) / total
        cut = int(np.searchsorted(cum, top_p, side="left")) + 1  # first index where cum >= top_p, inclusive
        sel = slice(0, cut) if order is None else order[:cut]
        return ids[sel], vals[sel]

    @staticmethod
    def _greedy(ids: np.ndarray, vals: np.ndarray) -> int:
        return int(ids[vals == np.max(vals)].min())  # the first max, ties to the lower id

    # -- public -------------------------------------------------------------------------------------------

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token; does not modify `logits` and does not accept() the token."""
        p = self.params
        # One draw per call even when greedy: llama.cpp's dist sampler stays in the chain at temp 0 too,
        # and it keeps a seed's stream independent of the temperature.
        u = self._draws.next()
        if p.temperature <= 0.0 and p.typical_p >= 1.0 and not p.post_sampling_probs:
            # top_k, top_p and min_p always keep the best token, so greedy is the argmax of adjusted logits
            return int(np.argmax(self._adjusted(logits)))  # np.argmax returns the first max
        ids, vals = self._candidates(logits)
        if p.temperature <= 0.0:
            token = self._greedy(ids, vals)
        else:
            # llama.cpp's dist step exactly: float32 logits / temp, expf of (logit - max) (float64 exp rounded
            # to float32 is what a correctly rounded expf gives), a running double sum in candidate order, and
            # the first candidate whose running sum reaches sum * u
            scaled = vals / np.float32(p.temperature)
            e = np.exp((scaled - np.max(scaled)).astype(np.float64)).astype(np.float32)
            cum = np.cumsum(e, dtype=np.float64)
            i = int(np.searchsorted(cum, cum[-1] * u, side="left"))
            token = int(ids[min(i, ids.size - 1)])
        if p.post_sampling_probs:
            # llama-server reports the candidates this token was drawn from, even though it accept()s the
            # token (moving the penalty window) before reporting; keep them for top_probs / token_prob.
            self._last = (np.array(logits, dtype=np.float32), self._post(ids, vals))
        return token

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probs): the distribution sample() draws from after the whole chain with the current penalty
        window, best first (a point mass when greedy). What speculative verification must preserve."""
        return self._post(*self._candidates(logits))

    def _post(self, ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The survivors' (ids, probs) at the request's temperature, best first, zero probabilities dropped."""
        if self.params.temperature <= 0.0:  # the temperature step masked all but the greedy token
            return np.array([self._greedy(ids, vals)]), np.array([1.0])
        probs = _softmax(vals / np.float32(self.params.temperature))
        order = np.argsort(-probs, kind="stable")
        order = order[probs[order].astype(np.float32) > 0]  # llama-server drops candidates whose p is 0
        return ids[order], probs[order]

    def _reported(self, logits: np.ndarray, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probs) of what llama-server reports in completion_probabilities; `ids` picks tokens of the
        default distribution (None: post-sampling, whose survivors come best first)."""
        if not self.params.post_sampling_probs:
            # Default: softmax of the raw model logits, before bias, penalties, filters and temperature --
            # for greedy and sampled requests alike (server_context::populate_token_probs).
            x = np.asarray(logits, dtype=np.float32)
            e = np.exp(x - np.max(x))
            return ids, e[ids] / e.sum(dtype=np.float64)
        if self._last is not None and np.array_equal(self._last[0], logits):
            return self._last[1]
        return self._post(*self._candidates(logits))  # not sampled yet: the current window applies

    def top_probs(self, logits: np.ndarray, n: int) -> list[tuple[int, float]]:
        """The top-n (token, prob) pairs llama-server reports for this step, best first; call it after
        sample(logits), before or after accept(). With post_sampling_probs the list may be shorter than n
        (survivors only)."""
        n = min(n, self.n_vocab)
        if n <= 0:
            return []
        top = None if self.params.post_sampling_probs else _top_ids(np.asarray(logits, dtype=np.float32), n)
        ids, probs = self._reported(logits, top)
        return [(int(t), float(q)) for t, q in zip(ids[:n], probs[:n])]

    def token_prob(self, logits: np.ndarray, token: int) -> float:
        """The reported probability of one token (the sampled one), from the same distribution as top_probs."""
        ids, probs = self._reported(logits, None if self.params.post_sampling_probs else np.array([token]))
        hit = np.flatnonzero(ids == token)
        return float(probs[hit[0]]) if hit.size else 0.0


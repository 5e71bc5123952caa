"""Drafts from a second, smaller model of the same vocabulary (llama-server's -md / --model-draft).

The draft model keeps its own KV cache per slot. Before each draft it is brought up to the slot's
context (the tokens the target has cached, plus the next input token): the prefix it already holds
is kept, the rest evaluated in chunks. Then it proposes its argmax token by token, stopping at n_max
tokens or when its top-10 probability of the next one falls under p_min (llama.cpp's draft sampler:
top_k 10, greedy). The proposal is deterministic, so the target's verify() keeps every request's output
distribution (engine/speculative.py). The tokens it evaluated past what the target accepts are
dropped at the next call by the prefix match, never trusted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kvcache.cache import KVCache
from ..model.forward import Llama, Segment
from ..model.tokenizer import Tokenizer
from .slot import common_prefix_len


@dataclass(frozen=True)
class DraftParams:
    """llama-server's --spec-draft-n-max / -n-min / -p-min."""
    n_max: int = 8  # most tokens per draft
    n_min: int = 0  # a shorter draft is not worth a wider forward: dropped
    p_min: float = 0.0  # stop drafting when the draft model is less sure than this of its next token


def vocab_mismatch(target: Tokenizer, draft: Tokenizer) -> str | None:
    """Why the draft's token ids do not mean the target's (None: they do). Drafts are compared by id, so
    every token must be the same text with the same id; llama.cpp also accepts vocabularies a few tokens
    apart, which would need a translation here."""
    if type(target) is not type(draft):
        return f"tokenizer types differ ({type(draft).__name__} vs the model's {type(target).__name__})"
    if target.n_vocab != draft.n_vocab:
        return f"{draft.n_vocab} tokens vs the model's {target.n_vocab}"
    if (target.bos_id, target.eos_id) != (draft.bos_id, draft.eos_id):
        return f"BOS/EOS ids {draft.bos_id}/{draft.eos_id} vs the model's {target.bos_id}/{target.eos_id}"
    for i in range(target.n_vocab):
        if target.token_text(i) != draft.token_text(i):
            return f"token {i} is {draft.token_text(i)!r} vs the model's {target.token_text(i)!r}"
    return None


class DraftModel:
    """The draft model and one KV cache per slot; `drafter(id_slot)` gives a generation its drafter."""
    TOP_K = 10

    def __init__(self, model: Llama, n_slots: int, n_ctx_slot: int, kv_type: str, params: DraftParams,
                 n_ubatch: int = 512):
        self.params, self.n_ubatch = params, n_ubatch
        self._layout = (n_slots, n_ctx_slot, kv_type)
        self.attach(model)

    def attach(self, model: Llama) -> None:
        """Serve drafts from `model`, every slot's cache empty: at the start, and after sleeping."""
        n_slots, n_ctx_slot, kv_type = self._layout
        self.model = model
        self.caches = [model.new_cache(n_ctx_slot, kv_type) for _ in range(n_slots)]

    def release(self) -> None:
        """Give back the weights and caches while the server sleeps (attach brings them back)."""
        self.model, self.caches = None, []

    def drafter(self, id_slot: int) -> "ModelDrafter":
        return ModelDrafter(self, self.caches[id_slot])

    def _catch_up(self, cache: KVCache, context: list[int]) -> np.ndarray:
        """Bring the cache to hold exactly `context`; the logits after its last token."""
        n_keep = common_prefix_len(cache.tokens, context)
        if n_keep == len(context) == cache.n_past and cache.logits is not None:
            return cache.logits
        n_keep = min(n_keep, len(context) - 1)  # the last token is evaluated again for its logits
        cache.truncate(n_keep)
        for start in range(n_keep, len(context), self.n_ubatch):
            self.model.forward([Segment(cache, context[start:start + self.n_ubatch])])
        return cache.logits

    def propose(self, cache: KVCache, context: list[int], n: int) -> list[int]:
        """Up to n greedy draft tokens to follow `context`, evaluated in `cache`."""
        logits = self._catch_up(cache, context)
        draft: list[int] = []
        while True:
            top = np.argpartition(logits, -self.TOP_K)[-self.TOP_K:] if logits.size > self.TOP_K else np.arange(logits.size)
            vals = logits[top].astype(np.float64)
            best = int(np.argmax(vals))
            p_best = 1.0 / np.exp(vals - vals[best]).sum()
            if p_best < self.params.p_min:
                break
            token = int(top[vals == vals[best]].min())  # ties to the lower id, as the target's argmax
            draft.append(token)
            if len(draft) >= n or cache.n_free <= 1:
                break
            logits = self.model.forward([Segment(cache, [token])])[0].logits[0]
        return draft if len(draft) >= self.params.n_min else []


class ModelDrafter:
    """One generation's drafter on the draft model (the interface of speculative.PromptLookup)."""

    def __init__(self, owner: DraftModel, cache: KVCache):
        self.owner, self.cache = owner, cache

    def draft(self, cached: list[int], next_token: int, room: int, limit: int) -> list[int]:
        n = min(room, self.owner.params.n_max, limit)
        if n <= 0 or n < self.owner.params.n_min:
            return []
        return self.owner.propose(self.cache, cached + [next_token], n)

    def feedback(self, n_accepted: int) -> None:
        pass  # the next draft's prefix match drops what was refuted

"""Hyperparameters of a LLaMA model, read once from GGUF metadata."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    n_rot: int  # how many dimensions of each head RoPE rotates
    rope_freq_base: float
    rms_eps: float
    bos_id: int | None
    eos_id: int | None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        """Width of one token's K (or V) row across all KV heads (llama.cpp's n_embd_k_gqa)."""
        return self.n_head_kv * self.head_dim

    @property
    def n_group(self) -> int:
        """Query heads that share one KV head (grouped-query attention)."""
        return self.n_head // self.n_head_kv

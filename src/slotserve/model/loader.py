"""GGUF file -> hyperparameters, float32 weights and tokenizer.

Every failure is a ModelLoadError whose message names the file and the problem, so the CLI can print
one line and exit instead of a traceback.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from .gguf_file import GGUFFile
from .hparams import HParams
from .tokenizer import Tokenizer
from .weight_cache import WeightCache, cached_weights

# Weight types whose dequantizer we test against llama.cpp's golden outputs. gguf can decode more,
# but a type nobody checked is refused rather than trusted. Q5_0 appears in llama.cpp's own Q4_K_M
# files (tensors whose width is not a multiple of 256 fall back to it).
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K,
}


class ModelLoadError(Exception):
    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"cannot load model '{path}': {problem}")


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    wqkv: np.ndarray  # q, k and v projections stacked row-wise: one matmul instead of three
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate_up: np.ndarray  # gate and up stacked row-wise, for the same reason
    w_down: np.ndarray


@dataclass
class Weights:
    tok_embd: np.ndarray  # (n_vocab, n_embd)
    layers: list[LayerWeights]
    output_norm: np.ndarray
    output: np.ndarray  # (n_vocab, n_embd); the embedding matrix itself when the model ties them
    rope_freqs: np.ndarray | None = None  # (n_rot/2,) Llama 3.1's per-pair divisors of the rope angles


@dataclass
class LoadedModel:
    path: Path
    name: str
    hparams: HParams
    weights: Weights
    tokenizer: Tokenizer
    fingerprint: str  # sha256 of the file: slot files carry it so a cache never meets another model
    chat_template: str | None
    n_params: int
    file_size: int
    ftype: str  # the weight type most of the matrices have, e.g. "Q4_K" ("mostly Q4_K" in llama.cpp's words)


def _read_hparams(meta: dict, path: Path, tokenizer: Tokenizer) -> HParams:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(path, f"architecture '{arch}' is not supported (only 'llama')")

    def need(key: str):
        value = meta.get(f"llama.{key}")
        if value is None:
            raise ModelLoadError(path, f"metadata key 'llama.{key}' is missing")
        return value

    # Llama 3.1's scaling comes as the rope_freqs.weight tensor; a scaling type with a factor (linear, YaRN,
    # LongRoPE) changes the angles in ways no golden output here checks, so it is refused, not approximated
    scaling = meta.get("llama.rope.scaling.type", "none")
    factor = float(meta.get("llama.rope.scaling.factor", meta.get("llama.rope.scale_linear", 0.0)) or 1.0)
    if scaling != "none" and factor != 1.0:
        raise ModelLoadError(path, f"rope scaling '{scaling}' (factor {factor:g}) is not supported")
    n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
    n_head_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    if n_embd % n_head or n_head % n_head_kv:
        raise ModelLoadError(path, f"inconsistent heads: n_embd {n_embd}, n_head {n_head}, n_head_kv {n_head_kv}")
    return HParams(
        n_vocab=tokenizer.n_vocab,
        n_embd=n_embd,
        n_layer=int(need("block_count")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=int(need("feed_forward_length")),
        n_ctx_train=int(need("context_length")),
        n_rot=int(meta.get("llama.rope.dimension_count", n_embd // n_head)),
        rope_freq_base=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | Path, progress: Callable[[int, int], None] | None = None,
               weight_cache: WeightCache | None = None) -> LoadedModel:
    """Read and dequantize a llama GGUF. `progress(done, total)` is called once per tensor."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(path, "not a GGUF file (the first 4 bytes are not 'GGUF')")
    try:
        reader = GGUFFile(path)
    except Exception as exc:  # the reader fails in many shapes on a cut or corrupt header
        raise ModelLoadError(path, f"corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from None

    try:
        tokenizer = Tokenizer.from_gguf(reader)
    except ValueError as exc:
        raise ModelLoadError(path, str(exc)) from None
    hp = _read_hparams(reader.metadata, path, tokenizer)

    tensors = {t.name: t for t in reader.tensors}
    for t in tensors.values():
        if t.data_offset + t.n_bytes > file_size:
            raise ModelLoadError(path, f"truncated: tensor '{t.name}' ends past the end of the file "
                                       f"({t.data_offset + t.n_bytes} > {file_size} bytes)")
        if t.tensor_type not in SUPPORTED_TYPES:
            raise ModelLoadError(path, f"tensor '{t.name}' has type {t.tensor_type.name}, which is not supported "
                                       f"(supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))})")

    weights, fingerprint = cached_weights(weight_cache, path, hp.n_layer,
                                          lambda: _widen(path, tensors, hp, progress), lambda: _file_sha256(path),
                                          progress)
    return LoadedModel(
        path=path,
        name=str(reader.metadata.get("general.name", path.stem)),
        hparams=hp,
        weights=weights,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        chat_template=reader.metadata.get("tokenizer.chat_template"),
        n_params=sum(int(np.prod(t.shape)) for t in tensors.values()),
        file_size=file_size,
        ftype=Counter(t.tensor_type.name for t in tensors.values() if len(t.shape) == 2).most_common(1)[0][0],
    )


def _widen(path: Path, tensors: dict, hp: HParams, progress: Callable[[int, int], None] | None) -> Weights:
    done, total = 0, len(tensors)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        nonlocal done
        t = tensors.get(name)
        if t is None:
            raise ModelLoadError(path, f"tensor '{name}' is missing")
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        if w.size != int(np.prod(shape)):
            raise ModelLoadError(path, f"tensor '{name}' has {w.size} elements, expected shape {shape}")
        done += 1
        if progress:
            progress(done, total)
        return w.reshape(shape)

    d, kv, ff = hp.n_embd, hp.n_embd_kv, hp.n_ff
    layers = []
    for i in range(hp.n_layer):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=get(p + "attn_norm.weight", (d,)),
            wqkv=np.concatenate([get(p + "attn_q.weight", (d, d)), get(p + "attn_k.weight", (kv, d)),
                                 get(p + "attn_v.weight", (kv, d))]),
            wo=get(p + "attn_output.weight", (d, d)),
            ffn_norm=get(p + "ffn_norm.weight", (d,)),
            w_gate_up=np.concatenate([get(p + "ffn_gate.weight", (ff, d)), get(p + "ffn_up.weight", (ff, d))]),
            w_down=get(p + "ffn_down.weight", (d, ff)),
        ))
    tok_embd = get("token_embd.weight", (hp.n_vocab, d))
    output = get("output.weight", (hp.n_vocab, d)) if "output.weight" in tensors else tok_embd
    rope_freqs = get("rope_freqs.weight", (hp.n_rot // 2,)) if "rope_freqs.weight" in tensors else None
    return Weights(tok_embd=tok_embd, layers=layers, output_norm=get("output_norm.weight", (d,)), output=output,
                   rope_freqs=rope_freqs)

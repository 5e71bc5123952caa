"""Write a synthetic, random-weight llama GGUF of a chosen shape, so big models can be benchmarked offline.

    python bench/make_model.py                       # 110M shape, F32 -> bench/models/synth-110M-f32.gguf
    python bench/make_model.py --type f16            # same weights stored as F16
    python bench/make_model.py --dim 288 --layers 6 --heads 6 --ffn 768 --out bench/models/small.gguf

The weights are noise, so the text is gibberish; what matters for speed is the shape, and that the
numbers stay finite: projections are N(0, 1) * 0.02 (the GPT-2/LLaMA init scale), norm weights are 1.0,
so every RMSNorm brings the residual stream back to unit scale and the logits stay around
0.02 * sqrt(dim) ~ 0.5 -- no NaN, no overflow in F16. Token embeddings are N(0, 1) (see EMBD_SCALE).
The 32000-token SentencePiece vocabulary comes from llama.cpp's ggml-vocab-llama-spm.gguf, so prompts
tokenize like a real LLaMA-1/2 model's. output.weight is a separate matrix (not tied to token_embd), so
the "110M" shape holds 134M parameters: 537 MB in F32, 269 MB in F16.

Tensors are generated and written one at a time (GGUFWriter's tensor-info-first path), so the file
never sits in memory whole. The file is written under a temporary name and renamed when complete,
so an interrupted run never leaves a truncated model that a later benchmark would pick up.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_VOCAB = BENCH_DIR.parent.parent / "shared" / "vocab" / "ggml-vocab-llama-spm.gguf"
INIT_SCALE = 0.02
# Token embeddings are drawn at unit scale, not 0.02. With 0.02 the residual stream is dominated by the
# (nearly uniform) attention average over the whole context, which barely moves from one step to the
# next, so greedy decoding repeats one token for many steps ("oster oster oster ...": 6 distinct tokens
# in 128) -- the best case for prompt-lookup speculation, and not what a real model does. At 1.0 each
# position carries its own token's identity and 128 greedy tokens were all distinct (seed 0).
EMBD_SCALE = 1.0

# general.file_type values (llama_ftype): 0 = ALL_F32, 1 = MOSTLY_F16 (1-D norm weights stay F32,
# as llama.cpp's converter does, because ggml's norm kernels want F32 there).
FILE_TYPE = {"f32": 0, "f16": 1}


def default_out(args: argparse.Namespace) -> Path:
    shape = "110M" if (args.dim, args.layers, args.heads, args.ffn) == (768, 12, 12, 2048) else \
        f"d{args.dim}-l{args.layers}-h{args.heads}-kv{args.kv_heads}-ff{args.ffn}"
    return BENCH_DIR / "models" / f"synth-{shape}-{args.type}.gguf"


def tensor_plan(dim: int, layers: int, heads: int, kv_heads: int, ffn: int, n_vocab: int) -> list[tuple[str, tuple]]:
    """(name, numpy shape) in llama.cpp's naming; numpy shape is (out, in), GGUF stores it reversed."""
    kv = dim // heads * kv_heads
    plan: list[tuple[str, tuple]] = [("token_embd.weight", (n_vocab, dim))]
    for i in range(layers):
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", (dim,)), (p + "attn_q.weight", (dim, dim)),
                 (p + "attn_k.weight", (kv, dim)), (p + "attn_v.weight", (kv, dim)),
                 (p + "attn_output.weight", (dim, dim)), (p + "ffn_norm.weight", (dim,)),
                 (p + "ffn_gate.weight", (ffn, dim)), (p + "ffn_up.weight", (ffn, dim)),
                 (p + "ffn_down.weight", (dim, ffn))]
    plan += [("output_norm.weight", (dim,)), ("output.weight", (n_vocab, dim))]
    return plan


def copy_tokenizer(writer: GGUFWriter, vocab_path: Path) -> int:
    """Copy every tokenizer.* key from the vocab-only GGUF; return the vocabulary size."""
    reader = GGUFReader(vocab_path)
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        if field.types[0] == GGUFValueType.ARRAY:
            # keep the exact element type (token_type is INT32, scores FLOAT32): llama.cpp checks it
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=field.types[1])
        else:
            writer.add_key_value(key, value, field.types[0])
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    if not n_vocab:
        raise SystemExit(f"make_model: {vocab_path} has no tokenizer.ggml.tokens")
    return n_vocab


def write_model(out: Path, *, dim: int, layers: int, heads: int, kv_heads: int, ffn: int, ftype: str,
                seed: int, embd_scale: float = EMBD_SCALE, n_ctx_train: int = 2048, vocab: Path = DEFAULT_VOCAB,
                quiet: bool = False) -> Path:
    if dim % heads or heads % kv_heads:
        raise SystemExit(f"make_model: dim {dim} must divide by heads {heads}, and heads by kv-heads {kv_heads}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    wdtype = np.float32 if ftype == "f32" else np.float16

    writer = GGUFWriter(tmp, "llama")  # opens nothing yet: the file appears at write_header_to_file
    try:
        _write(writer, out, dim=dim, layers=layers, heads=heads, kv_heads=kv_heads,
               ffn=ffn, wdtype=wdtype, ftype=ftype, seed=seed, embd_scale=embd_scale, n_ctx_train=n_ctx_train,
               vocab=vocab, quiet=quiet)
    except BaseException:  # ^C included: never leave a half-written .tmp behind
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    if not quiet:
        print(f"{out}: {out.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    return out


def _write(writer: GGUFWriter, out: Path, *, dim: int, layers: int, heads: int, kv_heads: int, ffn: int, wdtype,
           ftype: str, seed: int, embd_scale: float, n_ctx_train: int, vocab: Path, quiet: bool) -> None:
    rng = np.random.default_rng(seed)
    writer.add_name(out.stem)
    writer.add_description(f"synthetic random weights (seed {seed}) for benchmarks; not a trained model")
    writer.add_file_type(FILE_TYPE[ftype])
    n_vocab = copy_tokenizer(writer, vocab)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)

    plan = tensor_plan(dim, layers, heads, kv_heads, ffn, n_vocab)
    for name, shape in plan:
        dtype = np.float32 if len(shape) == 1 else wdtype
        writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    t0, written = time.perf_counter(), 0
    show_progress = not quiet and sys.stderr.isatty()  # a \r progress line is noise in logs
    for name, shape in plan:
        if len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            # draw in float32 whatever the storage type, so F32 and F16 files of one seed hold the same weights
            data = rng.standard_normal(shape, dtype=np.float32)
            data *= embd_scale if name == "token_embd.weight" else INIT_SCALE
            data = data.astype(wdtype, copy=False)
        writer.write_tensor_data(data)
        written += data.nbytes
        if show_progress:
            print(f"\rwriting {out.name}: {written / 1e6:7.1f} MB", end="", file=sys.stderr, flush=True)
    writer.flush()
    for f in writer.fout or []:
        os.fsync(f.fileno())
    writer.close()
    if not quiet:
        n_params = sum(int(np.prod(s)) for _, s in plan)
        print(f"\r{out.name}: {n_params / 1e6:.1f}M parameters written in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a random-weight llama GGUF for benchmarks.")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--ctx", type=int, default=2048, help="n_ctx_train written to the metadata")
    p.add_argument("--type", choices=sorted(FILE_TYPE), default="f32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embd-scale", dest="embd_scale", type=float, default=EMBD_SCALE,
                   help="std of token_embd.weight (other matrices: 0.02)")
    p.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="GGUF whose tokenizer.* keys are copied")
    p.add_argument("--out", type=Path, help="default: bench/models/synth-<shape>-<type>.gguf")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    write_model(args.out or default_out(args), dim=args.dim, layers=args.layers, heads=args.heads,
                kv_heads=args.kv_heads, ffn=args.ffn, ftype=args.type, seed=args.seed, embd_scale=args.embd_scale, n_ctx_train=args.ctx,
                vocab=args.vocab)


if __name__ == "__main__":
    main()

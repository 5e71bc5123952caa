"""What a grammar costs per generated token, next to what a decode step costs (issue 14's speed budget).

    python bench/constraint_cost.py                              # stories260K and the 32000-token synth model
    python bench/constraint_cost.py --models 110M-f32 --tokens 48   # the 110M shape (generated if missing)

For each model: building the vocabulary, compiling a JSON schema, and then one generation under that
schema where every step's pieces are timed apart -- the forward pass, the mask (llguidance), applying it
to the logits, the sampler, accepting the token. Then the same N tokens end to end four ways:
unconstrained; constrained with the mask computed after the forward (serial); with the mask computed on a
worker thread while the forward runs (overlapped); and in llama.cpp's order, where the sampled token is
checked and the mask computed only when the grammar refuses it. Wall and CPU time both: on a shared
machine the load of other processes moves the end-to-end numbers more than the mask does, and the
per-step medians are the steadier measure. Finally whether llguidance really releases the GIL.
Not a test: nothing asserts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "src"), str(BENCH)]

from slotserve.constraint import (Constraint, ConstraintMasks, GrammarVocab, from_json_schema,  # noqa: E402
                                  sample_constrained)
from slotserve.model.forward import Llama, Segment  # noqa: E402
from slotserve.model.loader import load_model  # noqa: E402
from slotserve.model.sampling import Sampler, SamplingParams  # noqa: E402

SHARED = BENCH.parent.parent / "shared" / "models"
MODELS = {"stories260K": BENCH.parent / "models" / "stories260K.gguf",
          "synth-spm-19M": SHARED / "synth-spm-19M-f16.gguf"}
SCHEMA = {  # nested, bounded: the kind of schema an SDK sends for a pydantic model
    "type": "object", "required": ["name", "age", "tags", "address"],
    "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 5},
        "address": {"type": "object", "required": ["city"],
                    "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}
PROMPT = "Once upon a time"


def resolve(name: str) -> Path:
    if name in MODELS:
        return MODELS[name]
    if name.startswith("110M"):
        from run import resolve_model  # makes the synthetic 110M file on first use
        return resolve_model(name)
    return Path(name)


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.3f} ms (mean {statistics.fmean(xs) * 1e3:.3f})"


def generate(lm, model, vocab, n: int, mode: str, seed: int = 1, timings: dict | None = None) -> tuple[float, float]:
    """n tokens; mode none / serial / overlap / llama.cpp (sample first, mask only a refused token). Returns the (wall, process CPU) time of the decode loop. A constrained run
    that completes its JSON starts over (rollback to the start), so every step carries a mask."""
    tok = lm.tokenizer
    sampler = Sampler(SamplingParams(temperature=0.8, seed=seed), tok.n_vocab, tok.eog_ids)
    constraint = None if mode == "none" else Constraint(from_json_schema(SCHEMA), vocab)
    masks = ConstraintMasks(vocab)
    cache = model.new_cache(n + 64)
    seg = model.forward([Segment(cache, tok.tokenize(PROMPT))])[0]
    t = {k: [] for k in ("forward", "mask", "apply", "sample", "accept")}
    clock = time.perf_counter
    start, cpu_start = clock(), time.process_time()
    pending = masks.compute_async([constraint]) if mode == "overlap" else None
    for i in range(n):
        logits = np.array(seg.logits[-1], dtype=np.float32)
        if constraint is not None and mode != "llama.cpp":
            t0 = clock()
            rows = pending.result() if pending is not None else masks.compute([constraint])
            t1 = clock()
            masks.apply(logits, rows[0])
            t2 = clock()
            t["mask"].append(t1 - t0)
            t["apply"].append(t2 - t1)
        t0 = clock()
        if mode == "llama.cpp":
            token, _ = sample_constrained(sampler, logits, constraint)
        else:
            token = sampler.sample(logits)
        sampler.accept(token)
        t1 = clock()
        if constraint is not None:
            if constraint.is_stopped() or tok.is_eog(token):
                constraint.rollback(constraint.n_accepted)
                token = tok.tokenize("\n", False)[-1]  # keep decoding: the next object starts afresh
            else:
                constraint.accept(token)
        t2 = clock()
        if mode == "overlap":
            pending = masks.compute_async([constraint])  # runs while the forward below does
        seg = model.forward([Segment(cache, [token])])[0]
        t3 = clock()
        t["sample"].append(t1 - t0)
        t["accept"].append(t2 - t1)
        t["forward"].append(t3 - t2)
    elapsed, cpu = clock() - start, time.process_time() - cpu_start
    if pending is not None:
        pending.result()
    masks.close()
    if timings is not None:
        timings.update(t)
    return elapsed, cpu


def gil_check(vocab: GrammarVocab, seconds: float = 0.5) -> tuple[float, float]:
    """(share of the worker's time spent inside llguidance, main-thread Python speed with it running / alone).
    If the GIL were held in the mask, the second number would drop by about the first."""
    c = Constraint(from_json_schema(SCHEMA), vocab)
    for token in vocab.greedy(b'{"name": "'):  # inside a string: most of the vocabulary is allowed, the costly case
        c.accept(token)
    row = np.empty(vocab.n_words, np.int32)

    def spin(stop: threading.Event, out: list) -> None:
        inside, t_start = 0.0, time.perf_counter()
        while not stop.is_set():
            t0 = time.perf_counter()
            c.fill_bitmask(row)
            inside += time.perf_counter() - t0
        out.append(inside / (time.perf_counter() - t_start))

    def count() -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    alone = count()
    stop, share = threading.Event(), []
    worker = threading.Thread(target=spin, args=(stop, share))
    worker.start()
    together = count()
    stop.set()
    worker.join()
    return share[0], together / alone


def bench(name: str, n: int, reps: int) -> None:
    path = resolve(name)
    lm = load_model(path)
    model = Llama(lm.hparams, lm.weights)
    t0 = time.perf_counter()
    vocab = GrammarVocab.from_tokenizer(lm.tokenizer, n_vocab=lm.hparams.n_vocab)
    t_vocab = time.perf_counter() - t0
    compile_s = []
    for _ in range(20):
        t0 = time.perf_counter()
        Constraint(from_json_schema(SCHEMA), vocab)
        compile_s.append(time.perf_counter() - t0)
    print(f"\n## {name} ({path.name}, n_vocab {vocab.n_vocab})\n")
    print(f"- vocabulary for llguidance: {t_vocab * 1e3:.0f} ms, once per model")
    print(f"- JSON schema -> matcher: {ms(compile_s)}")
    t: dict = {}
    generate(lm, model, vocab, n, "serial", timings=t)
    print(f"- per token, {n} tokens under the schema:")
    for k in ("forward", "mask", "apply", "sample", "accept"):
        print(f"  - {k}: {ms(t[k])}")
    walls = {m: [] for m in ("none", "serial", "overlap", "llama.cpp")}
    for rep in range(reps):
        for m in walls:  # interleaved, so drift in the machine's load hits all three alike
            walls[m].append(generate(lm, model, vocab, n, m, seed=rep + 1))
    # CPU time too: on a shared machine other processes' load moves wall time far more than the mask does
    base = [statistics.median(x[i] for x in walls["none"]) for i in (0, 1)]
    print(f"- {n} tokens end to end, median of {reps} (speed relative to unconstrained, by wall and by CPU time):")
    for m, xs in walls.items():
        w, c = (statistics.median(x[i] for x in xs) for i in (0, 1))
        print(f"  - {m:8s}: {n / w:7.1f} tok/s  {base[0] / w:.2f}x wall  {base[1] / c:.2f}x CPU")
    share, speed = gil_check(vocab)
    print(f"- GIL: a thread computing masks spends {share:.0%} of its time in llguidance; meanwhile the main "
          f"thread's Python runs at {speed:.2f}x its solo speed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    for name in a.models:
        bench(name, a.tokens, a.reps)


if __name__ == "__main__":
    main()

"""Generation under a JSON schema next to unconstrained generation, end to end through the engine (issue 14's
speed target: at least 0.9x on the 110M model, 0.7x on stories260K).

    python bench/constrained_engine.py                                   # stories260K
    python bench/constrained_engine.py --models synth-spm-19M 110M-f32 --tokens 64

Both sides decode the same prompt with ignore_eos for --tokens tokens; the schema (an array of at least 64
objects) cannot be complete sooner, so every step is constrained. The rate is the engine's own (decode steps
over decode time, as llama-server's predicted_per_second), the median of --reps runs, the two sides
alternating so that the load of other processes falls on both. On a shared machine both clocks swing with
the others' load (BLAS threads spin when starved), so the steadier figure is the last: the median time of
one forward pass and of one token's choice (sampling, mask, accept) timed apart, and the ratio they imply,
forward + choice unconstrained over forward + choice constrained. Not a test: nothing asserts.
"""
from __future__ import annotations

import argparse
import queue
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent / "src"), str(BENCH)]

from slotserve.constraint import GrammarVocab, from_json_schema  # noqa: E402
from slotserve.engine import scheduler  # noqa: E402
from slotserve.engine.scheduler import Engine, EngineConfig  # noqa: E402
from slotserve.engine.tasks import CompletionRequest, CompletionTask  # noqa: E402
from slotserve.model.forward import Llama  # noqa: E402
from slotserve.model.loader import load_model  # noqa: E402
from slotserve.model.sampling import SamplingParams  # noqa: E402

from constraint_cost import resolve  # noqa: E402  (stories260K, synth-spm-19M, 110M-*: the same names)
from workloads import RECORDS_SCHEMA  # noqa: E402

SCHEMA = {**RECORDS_SCHEMA, "minItems": 64}  # make bench's schema, kept open for --tokens of any length

PROMPT = "Once upon a time"


class Timed:
    """Wraps a function, keeping how long each call took (seconds) while `on`."""

    def __init__(self, fn):
        self.fn, self.times, self.on = fn, [], False

    def __call__(self, *args, **kw):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kw)
        finally:
            if self.on:
                self.times.append(time.perf_counter() - t0)


def rate(engine: Engine, prompt: list[int], n: int, temperature: float, constrained: bool) -> tuple[float, float]:
    """Decode steps per second of one request, by the wall clock and by the process's CPU time (the prompt's
    evaluation included, a few tokens): on a shared machine the second moves less with the others' load."""
    out: queue.Queue = queue.Queue()
    cpu = time.process_time()
    sampling = SamplingParams(temperature=temperature, seed=7, ignore_eos=True)
    engine.submit(CompletionTask(CompletionRequest(
        list(prompt), sampling, n_predict=n, cache_prompt=False, speculative=False,
        constraint=from_json_schema(SCHEMA) if constrained else None), out.put))
    result = out.get(timeout=3600)
    cpu = time.process_time() - cpu
    t = result.timings
    if t.predicted_n != n:
        print(f"  note: {t.predicted_n} tokens instead of {n} ({result.stop_type})", file=sys.stderr)
    return t.predicted_steps / t.predicted_ms * 1e3, t.predicted_steps / cpu


def bench(name: str, n: int, reps: int) -> None:
    lm = load_model(resolve(name))
    vocab = GrammarVocab.from_tokenizer(lm.tokenizer, n_vocab=lm.hparams.n_vocab)
    model = Llama(lm.hparams, lm.weights)
    model.forward = forward = Timed(model.forward)
    scheduler.choose = choose = Timed(scheduler.choose)
    engine = Engine(model, lm.tokenizer, EngineConfig(n_ctx_slot=n + 64), vocab=vocab)
    engine.start()
    try:
        prompt = lm.tokenizer.tokenize(PROMPT, True, True)
        rate(engine, prompt, 8, 0.8, True)  # warm-up: first compile, first forward
        for label, temperature in (("greedy", 0.0), ("temp 0.8", 0.8)):
            free, schema = [], []
            step = {False: [], True: []}  # choice times
            forward.on = True
            for rep in range(reps):
                sides = [(free, False), (schema, True)]
                for samples, constrained in sides[::1 if rep % 2 == 0 else -1]:
                    choose.on, choose.times = True, []
                    samples.append(rate(engine, prompt, n, temperature, constrained))
                    step[constrained] += choose.times
            forward.on = False
            line = f"{name} ({lm.hparams.n_vocab} tokens), {n} tokens {label}:"
            for i, clock in enumerate(("wall", "CPU")):
                a, b = statistics.median(r[i] for r in free), statistics.median(r[i] for r in schema)
                line += f" {clock}: unconstrained {a:.1f} tok/s, JSON schema {b:.1f} tok/s, ratio {b / a:.2f};"
            f, c0, c1 = (statistics.median(x) * 1e3 for x in (forward.times, step[False], step[True]))
            forward.times = []
            print(line + f" per token: forward {f:.3f} ms, choice {c0:.3f} ms unconstrained, {c1:.3f} ms "
                         f"constrained: ratio {(f + c0) / (f + c1):.2f}")
    finally:
        engine.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["stories260K"])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    for name in args.models:
        bench(name, args.tokens, args.reps)


if __name__ == "__main__":
    main()

"""Prefix lookups over thousands of stored prompt states: the radix index against a scan of every entry.

    python bench/prefix_index.py [--conversations 400 --turns 10]

The workload is the one a prompt cache sees: many conversations behind one shared system prompt,
every turn's prompt stored (each a prefix of the next turn's). Lookups are next-turn prompts (hits
that end in a new user line) and unrelated prompts (misses past the system prompt). The baseline is
what llama-server's server_prompt_cache does: the common prefix with every entry, here one numpy
comparison per entry (so the baseline runs in C too). No model, no server; no assertions on time.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from slotserve.kvcache.prefix_index import InsertParams, MatchPrefixParams, PrefixIndex  # noqa: E402


def conversations(n_conv: int, n_turns: int, n_vocab: int, rng: random.Random) -> list[list[list[int]]]:
    system = [rng.randrange(n_vocab) for _ in range(200)]
    out = []
    for _ in range(n_conv):
        prompt, turns = list(system), []
        for _ in range(n_turns):
            prompt = prompt + [rng.randrange(n_vocab) for _ in range(rng.randrange(40, 160))]
            turns.append(prompt)
        out.append(turns)
    return out


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


def scan(entries: list[np.ndarray], prompt: list[int]) -> int:
    p = np.asarray(prompt, np.int32)
    return max(common_prefix(e, p) for e in entries)


def timed(fn, prompts) -> tuple[float, list[int]]:
    """Median microseconds per lookup over 3 passes, and the results."""
    times, results = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        results = [fn(p) for p in prompts]
        times.append((time.perf_counter() - t0) / len(prompts) * 1e6)
    return statistics.median(times), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--lookups", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    rng = random.Random(0)
    convs = conversations(args.conversations, args.turns, args.vocab, rng)
    states = [t for c in convs for t in c]

    index = PrefixIndex()
    t0 = time.perf_counter()
    for s in states:
        index.insert(InsertParams(s))
    t_insert = (time.perf_counter() - t0) / len(states) * 1e6
    entries = [np.asarray(s, np.int32) for s in states]

    hits = [c[rng.randrange(args.turns - 1)] + [rng.randrange(args.vocab) for _ in range(30)]
            for c in rng.choices(convs, k=args.lookups // 2)]
    misses = [convs[0][0][:200] + [rng.randrange(args.vocab) for _ in range(rng.randrange(200, 1500))]
              for _ in range(args.lookups - len(hits))]
    prompts = hits + misses
    t_radix, r_radix = timed(lambda p: index.match_prefix(MatchPrefixParams(p)).n_match, prompts)
    t_scan, r_scan = timed(lambda p: scan(entries, p), prompts)
    assert r_radix == r_scan, "the index and the scan disagree"

    held = sum(len(s) for s in states)
    print(f"{len(states)} stored states ({args.conversations} conversations x {args.turns} turns), "
          f"{held:,} tokens in all; index holds {index.n_tokens:,} tokens in {index.n_nodes:,} nodes "
          f"({held / index.n_tokens:.1f}x less)")
    print(f"mean prompt {statistics.mean(map(len, prompts)):.0f} tokens, {len(prompts)} lookups "
          f"({len(hits)} hits, {len(misses)} misses past the system prompt)")
    print(f"insert          {t_insert:10.1f} us/state")
    print(f"lookup, radix   {t_radix:10.1f} us/prompt")
    print(f"lookup, scan    {t_scan:10.1f} us/prompt   (llama-server's way: every entry)")
    print(f"ratio           {t_scan / t_radix:10.1f}x  (scan / radix)")


if __name__ == "__main__":
    main()

"""Does the RAM prompt cache's byte budget hold in the process's memory, not only in its own count?

    python bench/prompt_cache_ram.py [--limit-mib 128 --states 60]

Stores conversation states shaped like the 110M model's cache (12 layers, 768-wide K/V rows, f16)
into a RamTier whose limit they exceed several times over, then reports the tier's count and the
resident set size (VmRSS) growth against the limit. No model; nothing asserted on time.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from slotserve.kvcache.cache import KVCache  # noqa: E402
from slotserve.kvcache.ram_tier import MiB, RamTier  # noqa: E402


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-mib", type=int, default=128)
    ap.add_argument("--states", type=int, default=60)
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()
    rng = random.Random(0)
    cache = KVCache(n_layer=12, n_head_kv=12, head_dim=64, n_ctx=args.n_ctx)
    rows = np.random.default_rng(0).standard_normal((args.n_ctx, cache.n_head_kv, cache.head_dim), np.float32)
    for layer in range(cache.k.shape[0]):
        cache.write(layer, 0, rows, rows)
    ram = RamTier(args.limit_mib)
    base = rss()
    peak, offered = 0, 0
    system = [rng.randrange(32000) for _ in range(100)]
    for i in range(args.states):
        n = rng.randrange(300, args.n_ctx)
        cache.tokens = system + [rng.randrange(32000) for _ in range(n - len(system))]
        r = ram.store_cache(cache)
        offered += r.n_new
        peak = max(peak, rss() - base)
    row = 2 * 12 * 768 * 2
    print(f"offered {offered * row / MiB:,.0f} MiB of new rows in {args.states} states to a {args.limit_mib} MiB tier")
    print(f"tier holds {ram.nbytes / MiB:.1f} MiB ({ram.index.n_nodes} runs, {ram.n_evicted} evicted)")
    print(f"RSS growth: now {(rss() - base) / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
          f"({peak / (args.limit_mib * MiB):.2f}x the limit)")


if __name__ == "__main__":
    main()

"""A soak: N clients for T seconds against one slotserve, mixing everything a real deployment sees, then checks.

    python bench/soak.py --clients 32 --seconds 600            # stories260K, 4 slots
    python bench/soak.py --clients 8 --seconds 60 -- -c 1024   # flags after -- go to the server

Each client loops over a weighted mix: completions, streams, streams and completions the client abandons
mid-way (a disconnect), slot save / restore / erase, and bad requests (malformed JSON, wrong fields, NaN, a
prompt too long for any slot, a bad slot id or file name). Then it checks, and exits 1 if any check fails:
- no request lost (a transport error other than our own abandon) or hung (no answer within --timeout);
- no 5xx, and every bad request answered with a 4xx, every good one with a 200;
- every slot idle after the clients stop (the engine freed what the abandoned requests held);
- RSS growth from the end of warm-up (the first tenth of the run) to the end, less what the RAM prompt cache
  grew by (/metrics; it fills towards --cache-ram by design), under --rss-bound-mb;
- every file a save reported is restorable (restored into slot 0 after the run, one by one).
Not a unit test: it runs for minutes and reports figures; nothing here asserts on latency.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from servers import Server, resident_mb, slotserve_command

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
WORDS = "once upon a time there was a little girl named lily she liked to play in the park with her dog".split()
MIX = {"completion": 30, "stream": 20, "abandon_stream": 8, "abandon_completion": 7, "save": 8, "restore": 8,
       "erase": 4, "bad": 15}
BAD = [  # (body bytes or object, path): each must get a 4xx
    (b"{not json", "/completion"),
    ({"prompt": "Hi", "n_predict": "x"}, "/completion"),
    (b'{"prompt": "Hi", "logit_bias": [[5, NaN]]}', "/completion"),
    ({"prompt": [1, 2, 999999]}, "/completion"),
    ({"prompt": "Hi", "id_slot": 99}, "/completion"),
    ({"messages": "not a list"}, "/v1/chat/completions"),
    ({"prompt": "word " * 200_000}, "/completion"),  # ~1 MB: cannot fit a slot, refused before tokenizing
    ({"prompt": "Hi", "grammar": "root ::= ("}, "/completion"),
]


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))


class Soak:
    def __init__(self, url: str, n_slots: int, timeout: float, mix: dict[str, int]):
        self.url, self.n_slots, self.timeout, self.mix = url, n_slots, timeout, mix
        self.counts: Counter = Counter()  # (kind, outcome)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []
        self.saved: list[str] = []

    def fail(self, what: str) -> None:
        self.counts["failure"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)

    async def client(self, n: int, deadline: float) -> None:
        rng = random.Random(n)
        kinds, weights = list(self.mix), list(self.mix.values())
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout) as http:
            i = 0
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                t0 = time.monotonic()
                try:
                    outcome = await getattr(self, kind)(http, rng, f"soak-{n}-{i}.bin")
                except httpx.TimeoutException:
                    outcome = "hung"
                    self.fail(f"{kind}: no answer within {self.timeout} s")
                except httpx.TransportError as exc:
                    outcome = "lost"
                    self.fail(f"{kind}: {type(exc).__name__}: {exc}")
                self.counts[(kind, outcome)] += 1
                self.latency[kind].append(time.monotonic() - t0)
                i += 1

    def expect(self, kind: str, res: httpx.Response, ok: bool) -> str:
        if res.status_code >= 500:
            self.fail(f"{kind}: {res.status_code} {res.text[:200]}")
        elif ok and res.status_code != 200:
            self.fail(f"{kind}: {res.status_code} {res.text[:200]}")
        elif not ok and not 400 <= res.status_code < 500:
            self.fail(f"{kind}: expected a 4xx, got {res.status_code}")
        return str(res.status_code)

    async def completion(self, http, rng, _):
        res = await http.post("/completion", json={"prompt": prompt(rng), "n_predict": rng.randint(1, 48),
                                                   "cache_prompt": rng.random() < 0.8})
        return self.expect("completion", res, True)

    async def stream(self, http, rng, _):
        body = {"prompt": prompt(rng), "n_predict": rng.randint(1, 48), "stream": True}
        async with http.stream("POST", "/completion", json=body) as res:
            if res.status_code != 200:
                await res.aread()
                return self.expect("stream", res, True)
            last = None
            async for line in res.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
            if not (last and last.get("stop")):
                self.fail("stream: ended without a final event")
                return "torn"
            return "200"

    async def abandon_stream(self, http, rng, _):
        body = {"prompt": prompt(rng), "n_predict": 200, "ignore_eos": True, "stream": True}
        async with http.stream("POST", "/completion", json=body) as res:
            n = rng.randint(1, 5)
            async for line in res.aiter_lines():
                n -= line.startswith("data: ")
                if n <= 0:
                    break  # leaving the block closes the connection mid-stream
        return "abandoned"

    async def abandon_completion(self, http, rng, _):
        body = {"prompt": prompt(rng), "n_predict": 200, "ignore_eos": True}
        try:
            await asyncio.wait_for(http.post("/completion", json=body), rng.uniform(0.01, 0.3))
        except asyncio.TimeoutError:
            return "abandoned"
        return "finished first"

    async def save(self, http, rng, filename):
        res = await http.post(f"/slots/{rng.randrange(self.n_slots)}?action=save", json={"filename": filename})
        if res.status_code == 200 and res.json().get("n_saved", 0) > 0:
            self.saved.append(filename)
        return self.expect("save", res, True)

    async def restore(self, http, rng, _):
        if not self.saved:
            return "nothing saved yet"
        res = await http.post(f"/slots/{rng.randrange(self.n_slots)}?action=restore",
                              json={"filename": rng.choice(self.saved)})
        return self.expect("restore", res, True)

    async def erase(self, http, rng, _):
        return self.expect("erase", await http.post(f"/slots/{rng.randrange(self.n_slots)}?action=erase"), True)

    async def bad(self, http, rng, _):
        body, path = rng.choice(BAD)
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        res = await http.post(path, headers={"Content-Type": "application/json"}, **kw)
        return self.expect("bad", res, False)


def cache_mb(url: str) -> float:
    """What the RAM prompt cache says it holds (/metrics): it grows by design, up to --cache-ram (8 GiB)."""
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        if line.startswith('slotserve:prompt_cache_bytes{tier="ram"} '):
            return float(line.split()[1]) / MiB
    return 0.0


def rss_mb(pid: int) -> float:
    mb = resident_mb(pid)
    return float("nan") if mb is None else mb


async def run(args, server: Server) -> dict:
    soak = Soak(server.url, args.slots, args.timeout, args.mix)
    start = time.monotonic()
    deadline = start + args.seconds
    rss = {"start": rss_mb(server.proc.pid)}
    series = []  # RSS every tenth of the run: a leak climbs, a warm-up levels off

    async def sample_rss():
        await asyncio.sleep(args.seconds / 10)
        rss["after_warmup"] = rss["max"] = rss_mb(server.proc.pid)
        rss["cache_after_warmup"] = await asyncio.to_thread(cache_mb, server.url)
        next_point = time.monotonic()
        while time.monotonic() < deadline:
            rss["max"] = max(rss["max"], rss_mb(server.proc.pid))
            if time.monotonic() >= next_point:
                series.append(round(rss_mb(server.proc.pid)))
                next_point += args.seconds / 10
            await asyncio.sleep(1)

    await asyncio.gather(sample_rss(), *(soak.client(n, deadline) for n in range(args.clients)))
    elapsed = time.monotonic() - start
    rss["end"] = rss_mb(server.proc.pid)
    rss["cache_end"] = cache_mb(server.url)

    async with httpx.AsyncClient(base_url=server.url, timeout=args.timeout) as http:
        for _ in range(60):  # abandoned requests are freed at the engine's next step: give it a moment
            slots = (await http.get("/slots")).json()
            if not any(s["is_processing"] for s in slots):
                break
            await asyncio.sleep(0.5)
        busy = [s["id"] for s in slots if s["is_processing"]]
        if busy:
            soak.fail(f"slots still processing after the run: {busy}")
        unrestorable = []
        for filename in soak.saved:
            res = await http.post("/slots/0?action=restore", json={"filename": filename})
            if res.status_code != 200:
                unrestorable.append(f"{filename}: {res.status_code} {res.text[:120]}")
        for what in unrestorable:
            soak.fail(f"saved file not restorable: {what}")
    # the prompt cache's own growth is not a leak: it is bounded by --cache-ram and counted by /metrics
    growth = rss["end"] - rss["after_warmup"] - (rss["cache_end"] - rss["cache_after_warmup"])
    if growth > args.rss_bound_mb:
        soak.fail(f"RSS grew {growth:.0f} MB after warm-up beyond the prompt cache's growth (bound "
                  f"{args.rss_bound_mb} MB)")

    by_kind, outcomes = defaultdict(dict), Counter()
    for key, n in soak.counts.items():
        if isinstance(key, tuple):
            by_kind[key[0]][key[1]] = n
            outcomes[key[1]] += n
    total = sum(n for key, n in soak.counts.items() if isinstance(key, tuple))
    return {
        "clients": args.clients, "seconds": round(elapsed, 1), "requests": total,
        "requests_per_s": round(total / elapsed, 1), "by_kind": by_kind,
        "latency_s": {k: {"p50": round(statistics.median(v), 3), "p99": round(sorted(v)[int(0.99 * (len(v) - 1))], 3),
                          "max": round(max(v), 3)} for k, v in soak.latency.items()},
        "lost": outcomes["lost"], "hung": outcomes["hung"],
        "files_saved": len(soak.saved), "files_unrestorable": len(unrestorable), "slots_busy_after": busy,
        "rss_mb": {k: round(v, 1) for k, v in rss.items()}, "rss_growth_beyond_cache_mb": round(growth, 1),
        "rss_series_mb": series,
        "rss_bound_mb": args.rss_bound_mb, "failures": soak.counts["failure"], "first_failures": soak.failures[:10],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--timeout", type=float, default=300, help="seconds without an answer that count as hung")
    p.add_argument("--rss-bound-mb", type=float, default=64, help="most RSS growth after warm-up")
    p.add_argument("--model", type=Path, default=REPO / "models" / "stories260K.gguf")
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    p.add_argument("--mix", type=lambda v: {k: int(w) for k, w in (kv.split("=") for kv in v.split(","))},
                   default=MIX, help="kind=weight,... (default: %(default)s)")
    p.add_argument("server_flags", nargs="*", help="after --: more slotserve flags")
    args = p.parse_args()
    # the server runs this tree's code, whatever the interpreter has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="slotserve-soak-") as save_dir:
        flags = ["-c", str(512 * args.slots), "-np", str(args.slots), "--slot-save-path", save_dir, "--metrics",
                 *args.server_flags]
        with Server("slotserve", slotserve_command(), args.model, flags) as server:
            report = asyncio.run(run(args, server))
            report["server_alive"] = server.proc.poll() is None
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["failures"] == 0 and report["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())

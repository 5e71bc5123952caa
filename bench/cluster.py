"""Scale-out on Ray Serve (issue 17): prefix-aware routing against round-robin, and the cost of the Ray hop.

    python bench/cluster.py                              # stories260K, 2 replicas, K=16 conversations, 4 turns
    python bench/cluster.py --k 32 --clients 4 --model bench/models/synth-110M-f32.gguf

1. Routing: `slotserve --ray-replicas 2` with --ray-routing prefix, then round-robin, on the same flags. K
   conversations (their openings share nothing) run `--clients` at a time; each turn sends the
   conversation so far plus a new user line and asks for a short greedy answer. Reported: prompt tokens
   evaluated (timings.prompt_n, summed), tokens reused (cache_n), and the mean wall time from sending a turn
   to its answer, with the prefix/round-robin ratio, and the front's routing counters.
2. The Ray hop: time to first token of short streamed completions (one token of prompt left to evaluate,
   the rest cached), the plain server against one replica behind the Ray front, same flags.

Servers run one after another. The CPU other processes used meanwhile is reported beside each row: on a
shared machine the times are only as good as that column.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from servers import ForeignCpu, Server
from workloads import word_salad

REPO = Path(__file__).resolve().parents[1]


def opening(i: int, n_words: int) -> str:
    return f"Story {i}: {word_salad(2000 + i, n_words)}"


def conversation(srv: Server, i: int, turns: int, n_predict: int, n_words: int) -> list[dict]:
    history, rows = opening(i, n_words), []
    for turn in range(turns):
        prompt = f"{history}\nUser: and then, part {turn}?\nBot:"
        body, wall_ms = srv.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0,
                                                 "cache_prompt": True})
        history = prompt + body["content"]
        rows.append({"turn": turn, "prompt_n": body["timings"]["prompt_n"], "cache_n": body["timings"]["cache_n"],
                     "wall_ms": wall_ms})
    return rows


def replica_pids(srv: Server) -> list[int]:
    return [r["pid"] for r in srv.client.get("/cluster").json()["replicas"]]


def run_routing(policy: str, model: Path, flags: list[str], args) -> dict:
    with Server(f"ray-{policy}", slotserve(), model, flags + ["--ray-replicas", str(args.replicas),
                                                               "--ray-routing", policy]) as srv:
        load = ForeignCpu([srv.proc.pid, *replica_pids(srv)])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            convs = list(pool.map(lambda i: conversation(srv, i, args.turns, args.n_predict, args.words),
                                  range(args.k)))
        elapsed, foreign = time.perf_counter() - t0, load.cores()
        routing = srv.client.get("/cluster").json()["routing"]
    rows = [r for c in convs for r in c]
    later = [r for r in rows if r["turn"] > 0]
    return {"prompt_n": sum(r["prompt_n"] for r in rows), "cache_n": sum(r["cache_n"] for r in rows),
            "mean_ms": statistics.mean(r["wall_ms"] for r in rows),
            "later_turns_reusing": sum(r["cache_n"] > 0 for r in later), "later_turns": len(later),
            "seconds": elapsed, "foreign_cores": foreign, "routing": routing}


def first_token_ms(srv: Server, prompt: str) -> float:
    t0 = time.perf_counter()
    body = {"prompt": prompt, "n_predict": 1, "temperature": 0, "stream": True, "cache_prompt": True}
    with srv.client.stream("POST", "/completion", json=body) as res:
        for line in res.iter_lines():
            if line.startswith("data: "):
                return (time.perf_counter() - t0) * 1e3
    raise RuntimeError(f"{srv.name}: no event in the stream")


def run_hop(name: str, model: Path, flags: list[str], args) -> dict:
    with Server(name, slotserve(), model, flags) as srv:
        prompt = opening(999, 30)
        first_token_ms(srv, prompt)  # warm: the prompt is cached from here on
        pids = [srv.proc.pid] + (replica_pids(srv) if "--ray-replicas" in flags else [])
        load = ForeignCpu(pids)
        times = [first_token_ms(srv, prompt) for _ in range(args.hop_n)]
        foreign = load.cores()
    return {"median_ms": statistics.median(times), "mean_ms": statistics.mean(times),
            "p90_ms": sorted(times)[int(0.9 * len(times))], "foreign_cores": foreign}


def slotserve() -> list[str]:
    return [sys.executable, "-m", "slotserve"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "models/stories260K.gguf"))
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--k", type=int, default=16, help="conversations")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--clients", type=int, default=4, help="conversations running at once")
    p.add_argument("--n-predict", type=int, default=16)
    p.add_argument("--words", type=int, default=30, help="words in each conversation's opening")
    p.add_argument("--np", type=int, default=2, help="slots per replica")
    p.add_argument("--ctx", type=int, default=8192, help="-c per replica (all its slots together)")
    p.add_argument("--hop-n", type=int, default=40, help="streamed requests timed for the Ray hop")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    model = Path(args.model).resolve()
    # this checkout's slotserve, whatever the venv has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    common = ["-c", str(args.ctx), "-np", str(args.np), "--temp", "0", "-t", "1"]
    results = {"model": model.name, "replicas": args.replicas, "k": args.k, "turns": args.turns, "words": args.words,
               "clients": args.clients, "np": args.np, "n_predict": args.n_predict, "routing": {}, "hop": {}}
    for policy in ("prefix", "round-robin"):
        print(f"running {policy} routing ...", file=sys.stderr, flush=True)
        results["routing"][policy] = run_routing(policy, model, common, args)
    for name, flags in (("plain server", common), ("1 replica via Ray", common + ["--ray-replicas", "1"])):
        print(f"timing first tokens: {name} ...", file=sys.stderr, flush=True)
        results["hop"][name] = run_hop(name, model, flags, args)
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def markdown(results: dict) -> str:
    routing, hop = results["routing"], results["hop"]
    ref = routing["round-robin"]
    lines = [f"{results['model']}: {results['replicas']} replicas x -np {results['np']}, K={results['k']} "
             f"conversations (openings of {results['words']} words), {results['turns']} turns of "
             f"{results['n_predict']}-token answers, "
             f"{results['clients']} at a time", "",
             "| routing | prompt tokens evaluated | vs round-robin | tokens reused | later turns reusing a prefix "
             "| mean ms to answer | vs round-robin | prefix hits / fallbacks / cold | other load (cores) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for policy, r in routing.items():
        c = r["routing"]
        lines.append(f"| {policy} | {r['prompt_n']} | {r['prompt_n'] / ref['prompt_n']:.2f}x | {r['cache_n']} "
                     f"| {r['later_turns_reusing']}/{r['later_turns']} | {r['mean_ms']:.1f} "
                     f"| {r['mean_ms'] / ref['mean_ms']:.2f}x | {c['prefix_hits']} / {c['fallbacks']} / {c['cold']} "
                     f"| {r['foreign_cores']:.2f} |")
    plain = hop["plain server"]
    lines += ["", "| time to first token (streamed, prompt cached) | median ms | mean ms | p90 ms | vs plain "
              "| other load (cores) |", "|---|---|---|---|---|---|"]
    for name, h in hop.items():
        lines.append(f"| {name} | {h['median_ms']:.2f} | {h['mean_ms']:.2f} | {h['p90_ms']:.2f} "
                     f"| +{h['median_ms'] - plain['median_ms']:.2f} ms | {h['foreign_cores']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

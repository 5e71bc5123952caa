"""Multi-conversation workload with a restart (issue 13): the prompt-cache tiers against llama-server.

    python bench/conversations.py                        # stories260K, K=8, 5 turns, restart after turn 3
    python bench/conversations.py --k 32 --model bench/models/synth-110M-f32.gguf
    LLAMA_SERVER=/path/to/llama-server python bench/conversations.py

K conversations take turns round-robin on -np 2; each turn sends the conversation so far plus a new
user line and asks for a 16-token greedy answer. After turn `--restart-after` every server is
stopped and started again with the same flags (the disk tier's directory kept). Reported per server
and phase (before / after the restart): prompt tokens evaluated (timings.prompt_n, summed), prompt
tokens reused (cache_n), and the mean wall time from sending a turn to its answer, with ratios to
llama-server (its default cache: --cache-ram 8192, idle slots on) measured in the same run, and the CPU
other processes used meanwhile (on a shared machine the times are only as good as that column).

Servers run one after another, on the same flags: llama-server, slotserve --cache-ram 0, slotserve
with the RAM tier (its default), slotserve with RAM and --cache-disk. slotserve is this checkout's
(python -m slotserve with src/ on PYTHONPATH), not whatever the venv has installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from servers import ForeignCpu, Server, ServerError, llama_server_version
from workloads import word_salad

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LLAMA = Path.home() / ".cache/slotserve-ref/bin/llama-server"


def opening(i: int) -> str:
    """Conversation i's first line: its own, so no conversation reuses another's prefix."""
    return f"Story {i}: {word_salad(1000 + i, 40)}"


def run_turn(srv: Server, histories: list[str], turn: int, n_predict: int) -> list[dict]:
    out = []
    for i, history in enumerate(histories):
        prompt = f"{history}\nUser: what happened next, part {turn}?\nBot:"
        body, wall_ms = srv.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0,
                                                 "cache_prompt": True})
        histories[i] = prompt + body["content"]
        t = body["timings"]
        out.append({"prompt_n": t["prompt_n"], "cache_n": t["cache_n"], "wall_ms": wall_ms,
                    "content": body["content"]})
    return out


def run_server(name: str, command: list[str], model: Path, flags: list[str], args) -> dict:
    """All turns on one server configuration, restarting it after args.restart_after turns."""
    histories = [opening(i) for i in range(args.k)]
    phases = {"before": [], "after": []}
    for phase, turns in (("before", range(args.restart_after)), ("after", range(args.restart_after, args.turns))):
        with Server(f"{name}-{phase}", command, model, flags) as srv:
            t0, load = time.perf_counter(), ForeignCpu([srv.proc.pid])
            for turn in turns:
                phases[phase].append(run_turn(srv, histories, turn, args.n_predict))
            elapsed, foreign = time.perf_counter() - t0, load.cores()
        rows = [r for t in phases[phase] for r in t]
        phases[phase] = {"prompt_n": sum(r["prompt_n"] for r in rows), "cache_n": sum(r["cache_n"] for r in rows),
                         "mean_ms": sum(r["wall_ms"] for r in rows) / len(rows), "seconds": elapsed, "foreign_cores": foreign,
                         "answers": [r["content"] for r in rows]}
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "models/stories260K.gguf"))
    p.add_argument("--k", type=int, default=8, help="conversations")
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--restart-after", type=int, default=3)
    p.add_argument("--n-predict", type=int, default=16)
    p.add_argument("--np", type=int, default=2, help="slots")
    p.add_argument("--ctx", type=int, default=8192, help="-c (all slots together)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    model = Path(args.model).resolve()
    llama_bin = os.environ.get("LLAMA_SERVER") or (str(DEFAULT_LLAMA) if DEFAULT_LLAMA.is_file() else None)
    common = ["-c", str(args.ctx), "-np", str(args.np), "--temp", "0"]
    # this checkout's slotserve, whatever the venv has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    slotserve = [sys.executable, "-m", "slotserve"]
    disk = Path(tempfile.mkdtemp(prefix="bench-cache-disk-"))
    configs = []
    if llama_bin:
        configs.append(("llama-server", [llama_bin], common))
    configs += [("slotserve --cache-ram 0", slotserve, common + ["--cache-ram", "0"]),
                ("slotserve RAM tier", slotserve, common),
                ("slotserve RAM+disk", slotserve, common + ["--cache-disk", str(disk)])]
    results = {"model": model.name, "k": args.k, "turns": args.turns, "restart_after": args.restart_after,
               "np": args.np, "n_predict": args.n_predict,
               "llama_server": llama_server_version(llama_bin) if llama_bin else None, "servers": {}}
    try:
        for name, command, flags in configs:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results["servers"][name] = run_server(name, command, model, flags, args)
            except ServerError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(disk, ignore_errors=True)
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def markdown(results: dict) -> str:
    servers = results["servers"]
    ref = servers.get("llama-server")
    base = servers.get("slotserve --cache-ram 0")
    lines = [f"{results['model']}: K={results['k']} conversations on -np {results['np']}, {results['turns']} turns "
             f"of {results['n_predict']}-token answers, restart after turn {results['restart_after']}",
             "", "| server | phase | prompt tokens evaluated | vs llama-server | tokens reused | mean ms to answer "
             "| vs llama-server | answers = --cache-ram 0 | other load (cores) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, phases in servers.items():
        for phase in ("before", "after"):
            r = phases[phase]
            vs_tokens = f"{r['prompt_n'] / ref[phase]['prompt_n']:.2f}x" if ref and ref[phase]["prompt_n"] else "-"
            vs_ms = f"{r['mean_ms'] / ref[phase]['mean_ms']:.2f}x" if ref else "-"
            same = "-" if base is None or name.startswith("llama") else \
                f"{sum(a == b for a, b in zip(r['answers'], base[phase]['answers']))}/{len(r['answers'])}"
            lines.append(f"| {name} | {phase} | {r['prompt_n']} | {vs_tokens} | {r['cache_n']} | {r['mean_ms']:.1f} "
                         f"| {vs_ms} | {same} | {r['foreign_cores']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

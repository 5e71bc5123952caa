"""slotserve versus llama-server, side by side, over HTTP, in one run (`make bench`).

    python bench/run.py                 # 110M F32, TinyLlama shape F16 and Q4_K_M (synthetic: made if missing)
    LLAMA_SERVER=/path/to/llama-server python bench/run.py --models stories260K 110M-f32 --reps 3

Both servers get the same model and flags and run at the same time, idle while the other is measured;
each repetition alternates which goes first, so drift in the machine (thermal, page cache) hits both.
Figures are medians over --reps. The ratio column is always slotserve's relative speed: slotserve/llama
for rates, llama/slotserve for times, so > 1 means slotserve is faster. Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

import httpx

import save_stall
import workloads as wl
from make_model import BENCH_DIR, write_model
from servers import (ForeignCpu, Server, ServerError, machine_info, resident_mb, slotserve_command,
                     wait_until_quiet)

LLAMA, SLOT = "llama.cpp", "slotserve"
CONTENDED = 0.2  # cores used by other processes during a measurement above which it is taken again
# How long to wait for a quiet machine before a measurement, and how many attempts a measurement gets; on a
# machine that is never quiet (shared with test suites) --patience 10 --attempts 1 keeps a run short, and
# the table still says how busy the machine was
PATIENCE = {"quiet_s": 60.0, "attempts": 3}
MODEL_ALIASES = {
    "stories260K": BENCH_DIR.parent / "models" / "stories260K.gguf",
    "110M-f32": BENCH_DIR / "models" / "synth-110M-f32.gguf",
    "110M-f16": BENCH_DIR / "models" / "synth-110M-f16.gguf",
}
# TinyLlama-1.1B's shape (the design card's model), 2.2 GB in F16: kept outside the repository
BIG_MODELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slotserve" / "bench-models"
TINYLLAMA = {"dim": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "ffn": 5632}
MODEL_ALIASES.update({f"tinyllama-{t}": BIG_MODELS / f"tinyllama-{t}.gguf" for t in ("f16", "q4km")})
# `make bench`: the 110M shape, then the design card's TinyLlama shape (Q4_K_M only with llama-quantize at hand)
DEFAULT_MODELS = ["110M-f32", "tinyllama-f16", "tinyllama-q4km"]

# A model with more parameters than this (the TinyLlama shape, in any type) runs a lighter plan: fewer tokens
# per generation, fewer repetitions, no slot-file rows. On 2 cores a 1.1B model decodes a few tokens a
# second: the full plan would hold the machine for an hour.
BIG_MODEL_PARAMS = 500_000_000


def is_big(model: Path) -> bool:
    from gguf import GGUFReader
    return sum(int(t.n_elements) for t in GGUFReader(model).tensors) > BIG_MODEL_PARAMS

# (key, label, unit, higher is better) in table order; {n_gen} is the run's tokens per generation
ROWS = [
    ("ready_s", "ready after the run's first start (GET /health 200; a new weight cache is written then)", "s", False),
    ("ready_again_s", "ready after a later start (warm weight cache and page cache)", "s", False),
    ("rss_mb", "resident memory after the -np 1 rows (RSS)", "MB", False),
    ("pp_tps", f"prompt processing, {wl.N_PP} tokens (timings)", "tok/s", True),
    ("pp_wall_tps", f"prompt processing, {wl.N_PP} tokens (wall)", "tok/s", True),
    ("tg_greedy_tps", "generation, {n_gen} tokens, greedy", "tok/s", True),
    ("tg_first_tps", "generation, {n_gen} tokens, greedy, first request after start", "tok/s", True),
    ("tg_sampled_tps", "generation, {n_gen} tokens, temp 0.8 seed " + str(wl.SAMPLE_SEED), "tok/s", True),
    ("tg_schema_free_tps", f"generation, {wl.N_GEN} tokens, greedy (next to the JSON-schema row)", "tok/s", True),
    ("tg_schema_tps", f"generation, {wl.N_GEN} tokens, greedy, under a JSON schema", "tok/s", True),
    ("schema_ratio", "JSON-schema generation / unconstrained, each server's own", "x", True),
    ("agg_tps", f"aggregate generation, {wl.N_CLIENTS} clients x {{n_gen}} (-np {wl.N_CLIENTS_MORE})", "tok/s", True),
    ("agg8_tps", f"aggregate generation, {wl.N_CLIENTS_MORE} clients x {{n_gen}} (-np {wl.N_CLIENTS_MORE})", "tok/s",
     True),
    ("save_ms", f"slot save, {wl.N_LONG} tokens, a new file", "ms", False),
    ("save_again_ms", f"slot save, {wl.N_LONG} tokens, again under the same name (replacing the file)", "ms", False),
    ("save_mbps", "slot save throughput", "MB/s", True),
    ("restore_ms", f"slot restore, {wl.N_LONG} tokens", "ms", False),
    ("restore_mbps", "slot restore throughput", "MB/s", True),
    ("ttft_restore_ms", f"first token of {wl.N_LONG}-token prompt: restore + cached", "ms", False),
    ("ttft_recompute_ms", f"first token of {wl.N_LONG}-token prompt: recomputed", "ms", False),
    ("restore_speedup", "restore speedup (recomputed / restored)", "x", True),
    ("ttft_continue_ms", f"first token of the restored {wl.N_LONG} tokens + 1 new: restore + cached", "ms", False),
    ("continue_speedup", "restore-and-continue speedup (recomputed / restored)", "x", True),
    ("save_sync_ms", f"slot save with fsync of file and directory, {wl.N_LONG} tokens (slotserve's default)", "ms",
     False),
    ("stall_step_ms", "-np 2: slot 0's step time, alone (median gap between tokens)", "ms", False),
    ("stall_save_gap_ms", f"-np 2: slot 0's worst gap while slot 1 ({wl.N_LONG} tokens) is saved", "ms", False),
    ("stall_restore_gap_ms", f"-np 2: slot 0's worst gap while slot 1 ({wl.N_LONG} tokens) is restored", "ms", False),
    ("stall_alone_worst_ms", "-np 2: slot 0's worst gap, alone (the machine's noise)", "ms", False),
    ("stall_gap_ratio", "-np 2: worst gap / step time (target <= 2)", "x", False),
    ("stall_p95_gap_ms", "-np 2: slot 0's 95th-percentile gap while slot 1 is saved and restored", "ms", False),
    ("stall_p95_ratio", "-np 2: 95th-percentile gap during actions / step time", "x", False),
]


def resolve_model(spec: str) -> Path | None:
    """An alias or a path; the synthetic models are generated on first use (seed 0, a few seconds; the TinyLlama
    shape a minute, its Q4_K_M a few more). None: tinyllama-q4km, which only llama-quantize can make, is missing
    and so is llama-quantize."""
    path = MODEL_ALIASES.get(spec, Path(spec))
    if not path.is_file() and path.name.startswith("synth-110M-"):
        print(f"generating {path} ...", file=sys.stderr)
        write_model(path, dim=768, layers=12, heads=12, kv_heads=12, ffn=2048,
                    ftype=path.stem.rsplit("-", 1)[1], seed=0)
    if not path.is_file() and spec == "tinyllama-q4km" and not quantizer().is_file():
        return None  # the caller says in the table what ran instead
    if not path.is_file() and spec.startswith("tinyllama-"):
        f16 = MODEL_ALIASES["tinyllama-f16"]
        if not f16.is_file():
            print(f"generating {f16} (2.2 GB, about a minute) ...", file=sys.stderr)
            write_model(f16, **TINYLLAMA, ftype="f16", seed=0)
        if spec == "tinyllama-q4km":
            quantize(f16, path, "Q4_K_M")
    if not path.is_file():
        raise SystemExit(f"bench: model not found: {path}" +
                         (" (run `make model`)" if path.name == "stories260K.gguf" else ""))
    return path


def quantizer() -> Path:
    return Path(os.environ.get("LLAMA_SERVER", "llama-server")).with_name("llama-quantize")


def quantize(src: Path, out: Path, qtype: str) -> None:
    """llama.cpp's own llama-quantize, found next to LLAMA_SERVER: the file llama-server users would run."""
    binary = quantizer()
    if not binary.is_file():
        raise SystemExit(f"bench: {out.name} needs {binary} (set LLAMA_SERVER to a llama.cpp build's llama-server)")
    print(f"quantizing {src.name} to {qtype} (a few minutes) ...", file=sys.stderr)
    tmp = out.with_name(out.name + ".tmp")
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    subprocess.run([str(binary), str(src), str(tmp), qtype], check=True, env=env, stdout=subprocess.DEVNULL)
    os.replace(tmp, out)  # an interrupted run leaves no half-quantized model under the real name


class Run:
    """One model's benchmark: how to start its servers, and the samples, notes and errors they produced."""

    def __init__(self, model: Path, commands: dict[str, list[str]], result: dict):
        self.model, self.commands = model, commands
        self.samples, self.notes, self.errors = result["samples"], result["notes"], result["errors"]

    def record(self, name: str, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.samples.setdefault(name, {}).setdefault(key, []).append(value)

    def guarded(self, name: str, what: str, fn, *args) -> dict:
        """Run one measurement; on failure, keep the message (it is the most useful output) and go on."""
        try:
            return fn(*args)
        except (ServerError, httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            msg = f"{name}: {what}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, (ServerError, httpx.HTTPError)):
                msg += "\n" + traceback.format_exc(limit=3)
            print("  ERROR " + msg, file=sys.stderr)
            self.errors.append(msg)
            return {}

    def measure(self, servers: dict[str, Server], name: str, what: str, fn, *args) -> dict:
        """One measurement, taken when the machine is quiet and repeated (at most twice more) when other
        processes took more than CONTENDED cores meanwhile; the least disturbed attempt is kept, and how
        disturbed it was is recorded next to it."""
        best, best_load = {}, math.inf
        for attempt in range(PATIENCE["attempts"]):
            wait_until_quiet(pids(servers), timeout_s=PATIENCE["quiet_s"])
            cpu = ForeignCpu(pids(servers))
            got = self.guarded(name, what, fn, *args)
            load = cpu.cores()
            if not got:
                return {}
            if load < best_load:
                best, best_load = got, load
            if load < CONTENDED:
                break
        self.record(name, {**best, "foreign_cores": best_load, "retaken": attempt})
        return best

    def start(self, stack: ExitStack, flags: dict[str, list[str]], key: str = "ready_again_s") -> dict[str, Server]:
        """Start every server (each with its own flags), recording its time to ready under `key`; one
        that fails is reported and left out."""
        started = {}
        for name, command in self.commands.items():
            try:
                started[name] = stack.enter_context(Server(name, command, self.model, flags[name]))
                self.record(name, {key: started[name].ready_s})
                print(f"  {name} ready on {started[name].url}", file=sys.stderr)
            except ServerError as exc:
                print(f"  ERROR {exc}", file=sys.stderr)
                self.errors.append(f"{name}: start with {' '.join(flags[name])}: {exc}")
        return started


def token_prompts(servers: dict[str, Server], run: Run) -> dict | None:
    """Token ids for every prompt, from llama-server's tokenizer when it runs (slotserve's is checked
    against it, since sending identical ids to both is what makes the rows comparable)."""
    prompts = None
    for name in (LLAMA, SLOT):
        if name not in servers:
            continue
        got = run.guarded(name, "POST /tokenize", lambda s=servers[name]: {
            "pp": wl.prompt_of(s, wl.N_PP, seed=1), "long": wl.prompt_of(s, wl.N_LONG, seed=2),
            "gen": wl.tokenize(s, wl.GEN_PROMPT),
            "agg": [wl.prompt_of(s, 24, seed=10 + i) for i in range(wl.N_CLIENTS_MORE)]})
        if prompts is None and got:
            prompts = got
        elif got and got["long"] != prompts["long"]:
            diff = next(i for i, (a, b) in enumerate(zip(got["long"], prompts["long"])) if a != b)
            run.notes.append(f"{name}: /tokenize differs from llama.cpp's at token {diff} of the same text")
    return prompts


def pids(servers: dict[str, Server]) -> list[int]:
    return [s.proc.pid for s in servers.values() if s.proc is not None]


def compare_greedy(greedy: dict[str, list[int]], notes: list[str], n_gen: int) -> None:
    """Same model, same prompt, temperature 0: the texts should match. Random-weight models have nearly
    flat logits, so a late divergence there can be float rounding; an early one on a trained model is a bug."""
    if LLAMA not in greedy or SLOT not in greedy:
        return
    a, b = greedy[LLAMA], greedy[SLOT]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    notes.append(f"greedy {n_gen}-token texts: identical" if a == b else
                 f"greedy {n_gen}-token texts: first {same} tokens identical, then they differ")


def first_request(run: Run, servers: dict[str, Server], name: str, tokens: list[int], n_gen: int) -> None:
    """Greedy generation as the server's first request (only /tokenize came before), taken once per start:
    retaking it when the machine was busy, as measure() does, would measure a second request."""
    wait_until_quiet(pids(servers), timeout_s=PATIENCE["quiet_s"])
    cpu = ForeignCpu(pids(servers))
    got = run.guarded(name, "first request", wl.generation, servers[name], tokens, "first", 0.0, run.notes, n_gen)
    run.record(name, {**got, "first_foreign_cores": cpu.cores()} if got else {})


def alternating(servers: dict[str, Server], reps: int):
    """(rep, name, server), the order of servers flipping every repetition."""
    for rep in range(reps):
        for name, server in list(servers.items())[::1 if rep % 2 == 0 else -1]:
            print(f"  rep {rep + 1}/{reps} {name}", file=sys.stderr)
            yield rep, name, server


GROUPS = ("prompt", "generation", "schema", "slots", "aggregate")  # --rows: which rows to measure


def bench_model(model: Path, commands: dict[str, list[str]], reps: int, threads: int, result: dict,
                groups: tuple[str, ...] = GROUPS) -> None:
    run = Run(model, commands, result)
    big = result["big"]
    n_gen = result["n_gen"]
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp, ExitStack() as stack:
        # rows 1, 2, 4, 5: one slot of 2048 (room for the 1,500-token prompt); a save directory each
        print(f"{model.name}: -c 2048 -np 1", file=sys.stderr)
        flags = {}
        for name in commands:
            save_dir = Path(tmp, name.replace(".", ""))
            save_dir.mkdir()
            flags[name] = ["-t", str(threads), "-c", "2048", "-np", "1", "--slot-save-path", str(save_dir)]
            if name == SLOT:  # llama-server writes without fsync: compared like for like (fsync: the stall rows)
                flags[name].append("--no-slot-save-sync")
        servers = run.start(stack, flags, "ready_s")
        prompts = token_prompts(servers, run)
        greedy: dict[str, list[int]] = {}
        if prompts:
            for name, s in servers.items():
                first_request(run, servers, name, prompts["gen"], n_gen)
                run.guarded(name, "warm-up", wl.warm_up, s)
            for rep, name, s in alternating(servers, reps):
                if "prompt" in groups:
                    run.measure(servers, name, "prompt processing", wl.prompt_processing, s, prompts["pp"], run.notes)
                for label, temp in (("greedy", 0.0), ("sampled", 0.8)) if "generation" in groups else ():
                    got = run.measure(servers, name, f"generation {label}", wl.generation, s, prompts["gen"],
                                      label, temp, run.notes, n_gen)
                    if label == "greedy" and "_tokens" in got:
                        greedy.setdefault(name, got["_tokens"])
                if "schema" in groups and not big:
                    run.measure(servers, name, "JSON schema", wl.schema_generation, s, prompts["gen"], run.notes)
                if "slots" in groups and not big:
                    run.measure(servers, name, "slot save/restore", wl.save_restore, s, prompts["long"], rep,
                                run.notes)
            compare_greedy(greedy, run.notes, n_gen)
            for name, s in servers.items():
                run.record(name, {"rss_mb": resident_mb(s.proc.pid)})
        stack.close()  # stop them before the next pair starts: two 110M servers idle are fine, four are not

        if "slots" in groups and prompts and not big:
            # the stall rows: two slots of 2048, slot 0 generating while slot 1 is saved and restored
            print(f"{model.name}: -c 4096 -np 2 (stall)", file=sys.stderr)
            servers = run.start(stack, {name: ["-t", str(threads), "-c", "4096", "-np", "2", "--slot-save-path",
                                               str(Path(tmp, name.replace(".", "")))] for name in commands})
            for _, name, s in alternating(servers, reps):
                got = run.measure(servers, name, "stall", save_stall.stall, s, prompts["gen"], prompts["long"],
                                  run.notes)
                if name == SLOT and "stall_first_save_ms" in got:
                    run.record(name, {"save_sync_ms": got["stall_first_save_ms"]})
            stack.close()
        if "aggregate" not in groups:
            return

        # row 3: eight slots of 1024 each, 4 then 8 clients at once
        n_slots = wl.N_CLIENTS_MORE
        print(f"{model.name}: -c 8192 -np {n_slots}", file=sys.stderr)
        servers = run.start(stack, {name: ["-t", str(threads), "-c", "8192", "-np", str(n_slots)] for name in commands})
        if prompts:
            for name, s in servers.items():
                run.guarded(name, "warm-up", wl.warm_up, s)
            for _, name, s in alternating(servers, reps):
                run.measure(servers, name, "aggregate", wl.aggregate, s, prompts["agg"][:wl.N_CLIENTS], run.notes,
                            n_gen)
                run.measure(servers, name, "aggregate 8", wl.aggregate, s, prompts["agg"], run.notes, n_gen,
                            "agg8_tps")


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    digits = 2 if unit in ("x", "ratio") or abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:,.{digits}f}"


def summarize(result: dict) -> list[dict]:
    rows = []
    for key, label, unit, higher in ROWS:
        med = {name: statistics.median(v[key]) for name, v in result["samples"].items() if v.get(key)}
        ratio = None
        if med.get(LLAMA) and med.get(SLOT) and unit != "x":  # a ratio of two speedups is no speed
            ratio = med[SLOT] / med[LLAMA] if higher else med[LLAMA] / med[SLOT]
        rows.append({"key": key, "label": label.format(n_gen=result["n_gen"]), "unit": unit, "higher_is_better": higher,
                     LLAMA: med.get(LLAMA), SLOT: med.get(SLOT), "ratio": ratio})
    return rows


def markdown(result: dict) -> str:
    lines = [f"### {Path(result['model']).name} ({result['reps']} reps, medians)", "",
             f"| metric | unit | {LLAMA} | {SLOT} | {SLOT} relative speed |", "|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        if r[LLAMA] is None and r[SLOT] is None:
            continue
        lines.append(f"| {r['label']} | {r['unit']} | {_fmt(r[LLAMA], r['unit'])} | {_fmt(r[SLOT], r['unit'])} "
                     f"| {_fmt(r['ratio'], 'x') + 'x' if r['ratio'] is not None else '-'} |")
    extra = []
    for name, v in result["samples"].items():
        for kind in ("greedy", "sampled"):
            if v.get(f"tg_{kind}_distinct_tokens"):
                extra.append(f"{name} {kind}: {statistics.median(v[f'tg_{kind}_distinct_tokens']):.0f}/{result['n_gen']} "
                             f"distinct tokens, 2-gram lookup would guess "
                             f"{100 * statistics.median(v[f'tg_{kind}_lookup_hit_rate']):.0f}%")
        busy = v.get("foreign_cores", [])
        if busy:
            extra.append(f"other processes used {statistics.median(busy):.2f} cores (median; max "
                         f"{max(busy):.2f}) while {name} was measured; {sum(v.get('retaken', []))} "
                         f"attempts were discarded as disturbed")
        if v.get("first_foreign_cores"):
            extra.append(f"other processes used {statistics.median(v['first_foreign_cores']):.2f} cores during "
                         f"{name}'s first request")
        if v.get("slot_mb"):
            extra.append(f"{name}: slot file {statistics.median(v['slot_mb']):.1f} MB")
    if extra:
        lines += [""] + [f"- {e}" for e in extra]
    for title, items in (("Notes", result["notes"]), ("Errors", result["errors"])):
        if items:
            lines += ["", f"{title}:"] + [f"- {m.splitlines()[0]}" for m in dict.fromkeys(items)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=f"a GGUF path or one of {', '.join(MODEL_ALIASES)}")
    p.add_argument("--models", nargs="+", help="several models, run one after another (overrides --model)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--patience", type=float, default=PATIENCE["quiet_s"],
                   help="seconds to wait for other processes to go quiet before each measurement")
    p.add_argument("--attempts", type=int, default=PATIENCE["attempts"],
                   help="tries per measurement when other processes were busy during it (the least disturbed is kept)")
    p.add_argument("--big-n-gen", type=int, default=32, help="tokens per generation for models over 500M parameters")
    p.add_argument("--big-reps", type=int, default=2, help="most repetitions for models over 500M parameters")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="-t for both servers")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "latest.json")
    p.add_argument("--only", choices=[SLOT, LLAMA], help="run one server only")
    p.add_argument("--rows", nargs="+", choices=GROUPS, default=list(GROUPS), help="row groups to measure")
    args = p.parse_args(argv)
    PATIENCE.update(quiet_s=args.patience, attempts=max(1, args.attempts))

    llama_bin = os.environ.get("LLAMA_SERVER")
    commands: dict[str, list[str]] = {}
    if args.only != SLOT:
        if llama_bin and Path(llama_bin).is_file():
            commands[LLAMA] = [llama_bin]
        elif args.only == LLAMA or llama_bin:
            raise SystemExit(f"bench: LLAMA_SERVER={llama_bin!r} is not a file" if llama_bin
                             else "bench: --only llama.cpp needs LLAMA_SERVER=/path/to/llama-server")
        else:
            print("bench: LLAMA_SERVER not set: measuring slotserve alone (no ratios)", file=sys.stderr)
    if args.only != LLAMA:
        commands[SLOT] = slotserve_command()

    wanted = args.models or ([args.model] if args.model else DEFAULT_MODELS)
    models = [(m, resolve_model(m)) for m in wanted]
    report = {"machine": machine_info(commands.get(LLAMA, [None])[0]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "threads": args.threads, "results": []}
    m = report["machine"]
    header = (f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']} ({m['blas']}); "
              f"llama-server: {m['llama_server'] or 'not run'}")
    print(header + "\n", flush=True)
    tables = [header]
    for spec, model in models:
        if model is None:
            tables.append(f"### {spec}: not run (no {quantizer()} to make it; set LLAMA_SERVER to a llama.cpp "
                          "build's llama-server)")
            print("\n" + tables[-1] + "\n", flush=True)
            continue
        big = is_big(model)
        reps = min(args.reps, args.big_reps) if big else args.reps
        result = {"model": str(model), "reps": reps, "n_gen": args.big_n_gen if big else wl.N_GEN, "big": big,
                  "samples": {}, "notes": [], "errors": []}
        if big:
            result["notes"].append(f"over {BIG_MODEL_PARAMS:,} parameters: {result['n_gen']} tokens per generation, {reps} reps, "
                                   "no slot-file, JSON-schema or stall rows")
        t0 = time.perf_counter()
        bench_model(model, commands, reps, args.threads, result, tuple(args.rows))
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"] = summarize(result)
        report["results"].append(result)
        tables.append(markdown(result))
        print("\n" + tables[-1] + "\n", flush=True)
    report["markdown"] = "\n\n".join(tables)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"results written to {args.json}", file=sys.stderr)
    return 1 if any(r["errors"] for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The stall a slot save or restore causes the other slots: one client streams from slot 0 while slot 1 is
saved and restored in a loop (a full 1,500-token slot each time, N_PAIRS times); run.py's stall rows.

Each token's arrival time is taken at the client. The normal step time is the median gap between tokens of
the same stream with no slot action running; the stall is the worst gap during the actions, and the
ratio of the two is what the issue's target (<= 2x) is about. The worst gap of the stream alone is the
machine's own noise floor for that ratio (a shared 2-core VM: 1.3-1.8x the median with no action at
all), and the 95th percentile of the gaps during actions is the steadier figure beside the worst.
"""
from __future__ import annotations

import json
import statistics
import threading
import time

from servers import Server, ServerError
from workloads import completion

N_STREAM = 200  # tokens slot 0 generates while slot 1 is saved and restored
N_PAIRS = 8  # saves and restores of slot 1 (each): llama-server runs one between two of slot 0's tokens
FILENAME = "stall.bin"


def _stream(server: Server, tokens: list[int], n_predict: int) -> list[float]:
    """Arrival times (perf_counter seconds) of each token of a streamed greedy completion on slot 0."""
    body = {"prompt": tokens, "n_predict": n_predict, "temperature": 0, "ignore_eos": True, "stream": True,
            "id_slot": 0, "cache_prompt": False}
    times = []
    with server.client.stream("POST", "/completion", json=body) as r:
        if r.status_code != 200:
            raise ServerError(f"{server.name}: streaming completion -> HTTP {r.status_code}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("stop"):
                break
            times.append(time.perf_counter())  # a chunk per token on both servers (one held back now and then
            # for an incomplete UTF-8 character makes one gap of two steps, on either)
    return times


def _gaps(times: list[float]) -> list[tuple[float, float]]:
    """(start, end) of each gap between consecutive tokens; the first token (the prompt) is left out."""
    return list(zip(times[1:], times[2:]))


def stall(server: Server, gen_tokens: list[int], long_tokens: list[int], notes: list[str]) -> dict:
    """Slot 1 filled with the long prompt and saved once; then slot 0 streams N_STREAM tokens alone (the
    normal step time), and again while slot 1 is saved and restored back to back."""
    completion(server, {"prompt": long_tokens, "n_predict": 1, "temperature": 0, "id_slot": 1,
                        "cache_prompt": True})
    saved, _ = server.post("/slots/1?action=save", {"filename": FILENAME})
    alone = _gaps(_stream(server, gen_tokens, N_STREAM))
    step_ms = statistics.median(b - a for a, b in alone) * 1e3

    windows: dict[str, list[tuple[float, float]]] = {"save": [], "restore": []}
    times: list[float] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            times.extend(_stream(server, gen_tokens, N_STREAM))
        except BaseException as exc:  # reported below, after the action loop stops
            errors.append(exc)
        finally:
            done.set()

    streamer = threading.Thread(target=generate)
    streamer.start()
    while not done.is_set() and len(windows["restore"]) < N_PAIRS:
        for action in ("save", "restore"):
            t0 = time.perf_counter()
            server.post(f"/slots/1?action={action}", {"filename": FILENAME})
            windows[action].append((t0, time.perf_counter()))
    streamer.join()
    if errors:
        raise ServerError(f"{server.name}: the stream during saves failed: {errors[0]}")

    def during(*actions: str) -> list[float]:
        return [(b - a) * 1e3 for a, b in _gaps(times)
                if any(a < w1 and b > w0 for action in actions for w0, w1 in windows[action])]

    def worst(action: str) -> float:
        return max(during(action), default=float("nan"))

    hit = sorted(during("save", "restore"))
    out = {"stall_step_ms": step_ms, "stall_alone_worst_ms": max(b - a for a, b in alone) * 1e3,
           "stall_save_gap_ms": worst("save"), "stall_restore_gap_ms": worst("restore"),
           "stall_p95_gap_ms": hit[int(0.95 * (len(hit) - 1))] if hit else float("nan"),
           "stall_n_actions": sum(len(w) for w in windows.values()),
           "stall_first_save_ms": float(saved.get("timings", {}).get("save_ms", float("nan")))}
    out["stall_gap_ratio"] = max(out["stall_save_gap_ms"], out["stall_restore_gap_ms"]) / step_ms
    out["stall_p95_ratio"] = out["stall_p95_gap_ms"] / step_ms
    if len(times) < N_STREAM - 1:
        notes.append(f"{server.name}: the stream during saves delivered {len(times)} of {N_STREAM} tokens")
    if not windows["save"]:
        notes.append(f"{server.name}: the stream ended before a save ran: no stall measured")
    return out

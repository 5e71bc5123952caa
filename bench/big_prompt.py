"""One huge request against a running server, and what everyone else sees meanwhile (issue 19, D1).

    python bench/big_prompt.py                       # 50 MB: a string prompt, a chat message, a token-id array
    python bench/big_prompt.py --mb 4 --kinds string
    LLAMA_SERVER=~/.cache/slotserve-ref/bin/llama-server python bench/big_prompt.py --llama   # side by side

For each kind: the big request's status and time; the slowest /health and the slowest small completion
(n_predict 4) answered on other connections while it was in flight; the server's peak RSS (VmHWM) and its growth.
Not a test: it prints figures.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import httpx

from servers import Server, slotserve_command

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


def body_of(kind: str, size: int) -> bytes:
    if kind == "string":
        return json.dumps({"prompt": "Once upon a time, there was a little girl. " * (size // 44)}).encode()
    if kind == "chat":
        return json.dumps({"messages": [{"role": "user", "content": "Hello there. " * (size // 13)}]}).encode()
    return json.dumps({"prompt": [300] * (size // 5)}).encode()  # "300, " is 5 bytes


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def probe(server: Server, kind: str, size: int) -> dict:
    path = "/v1/chat/completions" if kind == "chat" else "/completion"
    body = body_of(kind, size)
    worst = {"health": 0.0, "small": 0.0}
    counts = {"health": 0, "small": 0}
    done = threading.Event()

    def loop(name: str, call) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                res = call(http)
                dt = time.perf_counter() - t0
                if not done.is_set():  # only answers given while the big one was in flight
                    worst[name] = max(worst[name], dt)
                    counts[name] += res.status_code == 200
                time.sleep(0.1)

    threads = [threading.Thread(target=loop, args=("health", lambda h: h.get("/health"))),
               threading.Thread(target=loop, args=("small", lambda h: h.post(
                   "/completion", json={"prompt": "Hi", "n_predict": 4})))]
    pid = server.proc.pid
    hwm0 = status_kb(pid, "VmHWM")
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=900) as http:
        res = http.post(path, content=body, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join()
    hwm = status_kb(pid, "VmHWM")
    try:
        err = res.json().get("error", {})
    except ValueError:
        err = {}
    return {"kind": kind, "body_mb": round(len(body) / MB, 1), "status": res.status_code,
            "type": err.get("type"), "message": (err.get("message") or "")[:120], "seconds": round(elapsed, 2),
            "health_answered": counts["health"], "health_worst_s": round(worst["health"], 3),
            "small_answered": counts["small"], "small_worst_s": round(worst["small"], 3),
            "peak_rss_mb": round(hwm / 1024), "peak_growth_mb": round((hwm - hwm0) / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=50)
    p.add_argument("--kinds", nargs="+", default=["string", "chat", "ids"])
    p.add_argument("--llama", action="store_true", help="also llama-server ($LLAMA_SERVER), one after the other")
    p.add_argument("--model", type=Path, default=REPO / "models" / "stories260K.gguf")
    args = p.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    flags = ["-c", "2048", "-np", "2"]
    servers = [("slotserve", slotserve_command())]
    if args.llama:
        servers.append(("llama.cpp", [os.environ["LLAMA_SERVER"]]))
    for name, command in servers:
        for kind in args.kinds:  # a fresh server per kind: each peak is that request's own
            with Server(name, command, args.model, flags) as server:
                server.client.post("/completion", json={"prompt": "Hi", "n_predict": 2})
                print(json.dumps({"server": name, **probe(server, kind, int(args.mb * MB))}), flush=True)


if __name__ == "__main__":
    main()

"""Record llama-server's seeded, sampled completions for tests/api/test_seeded_sampling.py.

    LLAMA_SERVER=/path/to/llama-server python tests/golden/record_seeded.py

Starts the reference binary on models/stories260K.gguf with the test server's flags and writes
tests/golden/seeded_stories260K.json: each case's request and llama-server's generated tokens.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "api"))
from server import TINYLLAMA2  # noqa: E402  the flags every HTTP test server runs with

PROMPTS = ["I believe the meaning of life is", "Once upon a time", "The little dog was very happy because"]
SETTINGS = [{"temperature": 0.8, "seed": 42}, {"temperature": 0.8, "seed": 7}, {"temperature": 1.2, "seed": 123456},
            {"temperature": 0.8, "seed": 5, "repeat_penalty": 1.3}, {"temperature": 0.9, "seed": 9, "typical_p": 0.9},
            {"temperature": 1.0, "seed": 3, "top_k": 0}]


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ROOT / "models" / "stories260K.gguf"
    args = [os.environ["LLAMA_SERVER"], "-m", str(model), *TINYLLAMA2, "--port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(300):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            version = client.get("/props").json().get("build_info", "")
            cases = []
            for prompt in PROMPTS:
                for setting in SETTINGS:
                    request = {"prompt": prompt, "n_predict": 48, "cache_prompt": False, "return_tokens": True,
                               **setting}
                    answer = client.post("/completion", json=request).json()
                    cases.append({"request": request, "tokens": answer["tokens"], "content": answer["content"]})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    out = ROOT / "tests" / "golden" / "seeded_stories260K.json"
    lines = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)  # one case a line: reviewable diffs
    out.write_text(f'{{"llama_server": {json.dumps(version)}, "server_flags": {json.dumps(list(TINYLLAMA2))},\n'
                   f' "cases": [\n  {lines}\n]}}\n')
    print(f"{len(cases)} cases written to {out}")


if __name__ == "__main__":
    main()

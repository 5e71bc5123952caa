"""Record llama-server's seeded, sampled completions for tests/api/test_seeded_sampling.py.

    LLAMA_SERVER=/path/to/llama-server python tests/golden/record_seeded.py

Starts the reference binary on models/stories260K.gguf with the test server's flags and writes
tests/golden/seeded_stories260K.json: each case's request and llama-server's generated tokens.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "api"))
from server import TINYLLAMA2, ServerProcess  # noqa: E402  the test servers' flags and launcher

PROMPTS = ["I believe the meaning of life is", "Once upon a time", "The little dog was very happy because"]
SETTINGS = [{"temperature": 0.8, "seed": 42}, {"temperature": 0.8, "seed": 7}, {"temperature": 1.2, "seed": 123456},
            {"temperature": 0.8, "seed": 5, "repeat_penalty": 1.3}, {"temperature": 0.9, "seed": 9, "typical_p": 0.9},
            {"temperature": 1.0, "seed": 3, "top_k": 0}]


def main() -> None:
    model = ROOT / "models" / "stories260K.gguf"
    with ServerProcess(model, *TINYLLAMA2, binary=os.environ["LLAMA_SERVER"]) as llama:
        version = llama.get("/props").json().get("build_info", "")
        cases = []
        for prompt in PROMPTS:
            for setting in SETTINGS:
                request = {"prompt": prompt, "n_predict": 48, "cache_prompt": False, "return_tokens": True,
                           **setting}
                answer = llama.post("/completion", request).json()
                cases.append({"request": request, "tokens": answer["tokens"], "content": answer["content"]})
    out = ROOT / "tests" / "golden" / "seeded_stories260K.json"
    lines = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)  # one case a line: reviewable diffs
    out.write_text(f'{{"llama_server": {json.dumps(version)}, "server_flags": {json.dumps(list(TINYLLAMA2))},\n'
                   f' "cases": [\n  {lines}\n]}}\n')
    print(f"{len(cases)} cases written to {out}")


if __name__ == "__main__":
    main()

"""Seeded sampling draws llama-server's tokens: its recorded answers (tests/golden/record_seeded.py)
against a real slotserve process started with the same flags."""
import json
from pathlib import Path

import pytest
from server import TINYLLAMA2, ServerProcess

CASES = json.loads((Path(__file__).parents[1] / "golden" / "seeded_stories260K.json").read_text())

# Where our forward pass's float32 rounding (numpy's, not ggml's) decides a near tie, the texts part
# there: (prompt, seed) -> tokens that agree. Measured: "Once upon a time"/3 (top_k 0, full vocabulary)
# draws 1e-5 of the mass from a boundary at step 28; at step 47 of the other, a candidate sits 0.004
# logits from the min_p threshold, within the two forward passes' difference.
NEAR_TIES = {("Once upon a time", 3): 28, ("The little dog was very happy because", 123456): 47}


@pytest.fixture(scope="module")
def srv(stories_path):
    assert CASES["server_flags"] == list(TINYLLAMA2)  # recorded with the flags this server gets
    with ServerProcess(stories_path, *TINYLLAMA2) as s:
        yield s


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: f"{c['request']['prompt'][:12]}-{c['request']['seed']}")
def test_same_seed_same_tokens_as_llama_server(srv, case):
    answer = srv.post("/completion", case["request"]).json()
    n = NEAR_TIES.get((case["request"]["prompt"], case["request"]["seed"]))
    if n is None:
        assert answer["tokens"] == case["tokens"]
        assert answer["content"] == case["content"]
    else:
        assert answer["tokens"][:n] == case["tokens"][:n]


def test_most_cases_need_no_allowance():
    assert len(NEAR_TIES) <= 2 < len(CASES["cases"]) == 18

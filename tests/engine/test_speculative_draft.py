"""A draft model (-md): its own KV per slot, drafts verified by the target, greedy output unchanged."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slotserve.engine.draft_model import DraftModel, DraftParams, vocab_mismatch
from slotserve.engine.scheduler import Engine, EngineConfig
from slotserve.model.forward import Llama
from slotserve.model.sampling import SamplingParams

from engine_helpers import GREEDY, complete, loaded  # noqa: F401 (loaded: a fixture)

PROMPTS = ["Once upon a time", "The little dog was very happy ", " Hello world", "Lily and Ben went to the park."]


def draft_engine(lm, params: DraftParams, n_parallel=2, n_ctx_slot=512) -> Engine:
    """An engine whose draft model is stories260K itself (loaded once: the same weights, a second Llama)."""
    config = EngineConfig(n_parallel=n_parallel, n_ctx_slot=n_ctx_slot, n_draft=params.n_max)
    draft = DraftModel(Llama(lm.hparams, lm.weights), n_parallel, n_ctx_slot, config.kv_type, params)
    eng = Engine(Llama(lm.hparams, lm.weights), lm.tokenizer, config, draft=draft)
    eng.start()
    return eng


@pytest.fixture(scope="module")
def plain(loaded):
    eng = Engine(Llama(loaded.hparams, loaded.weights), loaded.tokenizer, EngineConfig(n_parallel=2, n_ctx_slot=512))
    eng.start()
    yield eng
    eng.stop()


@pytest.mark.parametrize("n_max", [1, 4, 16])
def test_the_model_as_its_own_draft_gives_the_same_greedy_tokens(loaded, plain, n_max):
    eng = draft_engine(loaded, DraftParams(n_max=n_max))
    try:
        for prompt in PROMPTS:
            want = complete(plain, loaded.tokenizer, prompt, n_predict=120, speculative=False, sampling=GREEDY)
            got = complete(eng, loaded.tokenizer, prompt, n_predict=120, sampling=GREEDY)
            assert got.tokens == want.tokens and got.content == want.content
            assert got.timings.draft_n > 0
            # its own argmax: every drafted token the target still needed is confirmed (only the tokens
            # drafted past the end, n_predict or an end of text, go unused)
            assert got.timings.draft_n_accepted >= got.timings.draft_n - n_max
            assert got.tokens_cached == want.tokens_cached
    finally:
        eng.stop()


def test_a_seeded_sampled_request_matches_plain_decoding(loaded, plain):
    eng = draft_engine(loaded, DraftParams(n_max=4))
    try:
        for seed in range(12):
            sampling = SamplingParams(temperature=0.8, seed=seed)
            want = complete(plain, loaded.tokenizer, "Once upon a time", n_predict=40, speculative=False,
                            sampling=sampling)
            got = complete(eng, loaded.tokenizer, "Once upon a time", n_predict=40, sampling=sampling)
            assert got.tokens == want.tokens
    finally:
        eng.stop()


def test_drafts_shorter_than_n_min_are_dropped_and_p_min_stops_drafting(loaded):
    never = draft_engine(loaded, DraftParams(n_max=4, n_min=5))  # n_min above n_max: no draft is ever long enough
    unsure = draft_engine(loaded, DraftParams(n_max=4, p_min=1.01))  # no token is that sure
    try:
        for eng in (never, unsure):
            r = complete(eng, loaded.tokenizer, "Once upon a time", n_predict=20, sampling=GREEDY)
            assert r.timings.draft_n == 0 and len(r.tokens) == 20
            assert "draft_n" not in r.timings.as_dict()  # as llama-server: only for a generation that drafted
    finally:
        never.stop()
        unsure.stop()


def test_the_draft_cache_follows_the_slot_through_refutations(loaded):
    """After each step the draft cache holds the target's accepted context as a prefix, whatever was refuted."""
    lm = loaded
    draft = DraftModel(Llama(lm.hparams, lm.weights), 1, 256, "f32", DraftParams(n_max=6))
    drafter = draft.drafter(0)
    context = lm.tokenizer.tokenize("Once upon a time", True, True)
    first = drafter.draft(context[:-1], context[-1], room=8, limit=8)
    assert len(first) == 6
    # the target took two of them and then chose another token: the next draft continues that context
    refuted = first[:2] + [(first[2] + 1) % lm.hparams.n_vocab]
    again = drafter.draft(context + refuted[:-1], refuted[-1], room=8, limit=8)
    fresh = DraftModel(Llama(lm.hparams, lm.weights), 1, 256, "f32", DraftParams(n_max=6)).drafter(0)
    assert again == fresh.draft(context + refuted[:-1], refuted[-1], room=8, limit=8)
    assert draft.caches[0].tokens[:len(context) + 3] == context + refuted


def test_a_draft_must_share_the_vocabulary(loaded, bpe_model):
    assert vocab_mismatch(loaded.tokenizer, loaded.tokenizer) is None
    problem = vocab_mismatch(loaded.tokenizer, bpe_model.tokenizer)
    assert problem and "the model's" in problem


def test_a_draft_with_another_vocabulary_stops_the_start(stories_path, shared):
    other = shared("models", "synth-bpe-8M-f16.gguf")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    res = subprocess.run([sys.executable, "-m", "slotserve", "-m", str(stories_path), "-md", str(other),
                          "--port", "0", "--no-weight-cache"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"slotserve: cannot load model '{other}': as a draft (-md)")
    assert "vocabulary differs" in last


def test_over_http_the_flags_give_the_same_text_with_draft_counts(stories_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
    from server import TINYLLAMA2, ServerProcess
    body = {"prompt": "Once upon a time", "n_predict": 48, "temperature": 0.2, "top_k": 5, "seed": 4242,
            "return_tokens": True}
    with ServerProcess(stories_path, *TINYLLAMA2) as srv:
        want = srv.post("/completion", body).json()
    with ServerProcess(stories_path, *TINYLLAMA2, "-md", str(stories_path), "--spec-draft-n-max", "4",
                       "--draft-min", "2", "--draft-p-min", "0.1") as srv:
        got = srv.post("/completion", body).json()
    assert got["tokens"] == want["tokens"]
    assert got["timings"]["draft_n"] > 0 and 0 < got["timings"]["draft_n_accepted"] <= got["timings"]["draft_n"]

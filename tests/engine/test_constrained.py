"""Constrained generation through the engine on the real stories260K model: grammars and JSON schemas under
continuous batching, speculation, seeds, n_predict, ignore_eos, n_probs and lazy triggers."""
import json
import re

import jsonschema
import pytest

from engine_helpers import GREEDY, complete, loaded, new_engine, result_of, submit  # noqa: F401 (loaded: a fixture)
from slotserve.constraint import from_fields, from_gbnf, from_json_schema
from slotserve.engine.tasks import CompletionResult, EngineError, ErrorKind, StopReason
from slotserve.model.sampling import SamplingParams

PROMPT = "Once upon a time, there"
SAMPLINGS = [GREEDY] + [SamplingParams(temperature=0.8, seed=s) for s in (1, 2, 3)]

SCHEMAS = {
    "required fields": {"type": "object", "required": ["name", "age"],
                        "properties": {"name": {"type": "string", "maxLength": 12},
                                       "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
    "enums and arrays": {"type": "object", "required": ["color", "tags"],
                         "properties": {"color": {"enum": ["red", "green", "blue"]},
                                        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                                                 "minItems": 1, "maxItems": 3}}},
    "nested": {"type": "object", "required": ["user", "ok"],
               "properties": {"user": {"type": "object", "required": ["id"],
                                       "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}}},
                              "ok": {"type": "boolean"}}},
}
GRAMMARS = {  # GBNF, and the language as a Python regular expression
    "alternation": ('root ::= "yes" | "no" | "maybe so"\n', r"yes|no|maybe so"),
    "repetition and classes": ('root ::= [a-z]{3,6} ("-" [0-9]{1,3}){1,2}\n', r"[a-z]{3,6}(-[0-9]{1,3}){1,2}"),
}


@pytest.fixture(scope="module")
def engine(loaded):
    eng = new_engine(loaded, n_parallel=4, n_ctx_slot=512)
    yield eng
    eng.stop()


def run_all(engine, tokenizer, requests):
    """Submit every (prompt, kwargs) at once, so they share the engine's batches; their results in order."""
    queues = [submit(engine, tokenizer, prompt, **kw)[0] for prompt, kw in requests]
    return [result_of(q)[0] for q in queues]


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_answers_parse_validate_and_end_on_eos(engine, loaded, name):
    spec = from_json_schema(SCHEMAS[name])
    results = run_all(engine, loaded.tokenizer, [(PROMPT, dict(n_predict=200, sampling=s, constraint=spec))
                                                 for s in SAMPLINGS])
    for r in results:
        assert r.stop_type is StopReason.EOS, r.content
        jsonschema.validate(json.loads(r.content), SCHEMAS[name])


@pytest.mark.parametrize("name", GRAMMARS)
def test_gbnf_answers_match(engine, loaded, name):
    grammar, regex = GRAMMARS[name]
    results = run_all(engine, loaded.tokenizer, [(PROMPT, dict(n_predict=60, sampling=s, constraint=from_gbnf(grammar)))
                                                 for s in SAMPLINGS])
    for r in results:
        assert r.stop_type is StopReason.EOS and re.fullmatch(regex, r.content), r.content


def test_batching_with_an_unconstrained_slot_changes_no_answer(engine, loaded):
    tok = loaded.tokenizer
    requests = [(PROMPT, dict(n_predict=80)),
                (PROMPT, dict(n_predict=80, sampling=SAMPLINGS[1], constraint=from_json_schema(SCHEMAS["nested"]))),
                ("Lily and Ben", dict(n_predict=80, sampling=SAMPLINGS[2],
                                      constraint=from_gbnf(GRAMMARS["repetition and classes"][0])))]
    alone = [complete(engine, tok, prompt, cache_prompt=False, **kw) for prompt, kw in requests]
    together = run_all(engine, tok, [(prompt, dict(cache_prompt=False, **kw)) for prompt, kw in requests])
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert alone[0].stop_type is StopReason.LIMIT and len(alone[0].tokens) == 80  # the free one went on


def test_seeded_constrained_runs_are_reproducible(engine, loaded):
    spec = from_json_schema(SCHEMAS["enums and arrays"])
    kw = dict(n_predict=120, constraint=spec, sampling=SamplingParams(temperature=1.0, seed=42))
    first, second = run_all(engine, loaded.tokenizer, [(PROMPT, kw), (PROMPT, kw)])  # one spec, as n_cmpl shares it
    third = complete(engine, loaded.tokenizer, PROMPT, **kw)
    assert first.tokens == second.tokens == third.tokens


def test_speculation_leaves_constrained_greedy_output_unchanged(loaded):
    # JSON in the prompt: prompt-lookup finds drafts, some of which the grammar cuts short
    prompt = '{"name": "Tom", "age": 3} {"name": "Tom", "age": 3} {"name": "Tom", "age": 3}'
    spec = from_json_schema({"type": "array", "minItems": 2, "maxItems": 2, "items": SCHEMAS["required fields"]})
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=512)
    try:
        plain = complete(eng, loaded.tokenizer, prompt, n_predict=150, constraint=spec, speculative=False)
        fast = complete(eng, loaded.tokenizer, prompt, n_predict=150, constraint=spec, cache_prompt=False)
        stats = eng.snapshot.stats
    finally:
        eng.stop()
    assert stats.n_draft_steps > 0 and stats.n_draft_accepted > 0
    assert fast.tokens == plain.tokens and fast.stop_type is plain.stop_type is StopReason.EOS
    jsonschema.validate(json.loads(fast.content), {"type": "array", "items": SCHEMAS["required fields"]})


def test_a_grammar_cut_short_by_n_predict_or_a_stop_string(engine, loaded):
    spec = from_json_schema(SCHEMAS["required fields"])
    short = complete(engine, loaded.tokenizer, PROMPT, n_predict=5, constraint=spec)
    assert short.stop_type is StopReason.LIMIT and len(short.tokens) == 5
    worded = complete(engine, loaded.tokenizer, PROMPT, n_predict=100, constraint=spec, stop=['"age"'])
    assert worded.stop_type is StopReason.WORD and worded.content.startswith("{")


def test_ignore_eos_ends_when_the_grammar_is_complete(engine, loaded):
    done = complete(engine, loaded.tokenizer, PROMPT, n_predict=50, constraint=from_gbnf('root ::= "yes" | "no"'),
                    sampling=SamplingParams(temperature=0, ignore_eos=True))
    assert done.stop_type is StopReason.EOS and done.content in ("yes", "no")
    assert not any(loaded.tokenizer.is_eog(t) for t in done.tokens)


def test_a_grammar_the_vocabulary_cannot_serve_is_refused_on_submit(engine, loaded):
    with pytest.raises(EngineError) as refused:
        submit(engine, loaded.tokenizer, PROMPT, constraint=from_gbnf('%llguidance {}\nstart: "x" <|tool_call|>\n'))
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and "tool_call" in refused.value.message


def test_logit_bias_that_leaves_no_allowed_token_fails_that_request_only(engine, loaded):
    x = loaded.tokenizer.tokenize("x", False, False)[-1]
    assert loaded.tokenizer.token_to_piece(x, special=False) == b"x"
    biased = SamplingParams(temperature=0.8, seed=1, logit_bias=((x, float("-inf")),))
    failed, fine = run_all(engine, loaded.tokenizer, [(PROMPT, dict(sampling=biased, constraint=from_gbnf('root ::= "x"'))),
                                                      (PROMPT, dict(n_predict=20))])
    assert isinstance(failed, EngineError) and "logit_bias leaves no token the grammar allows" in failed.message
    assert isinstance(fine, CompletionResult) and len(fine.tokens) == 20


def test_n_probs_report_the_raw_logits_as_llama_server(engine, loaded):
    """Without post_sampling_probs llama-server reports the model's distribution, before the grammar's mask."""
    free = complete(engine, loaded.tokenizer, PROMPT, n_predict=1, n_probs=5)
    spec = from_gbnf('root ::= "{" [a-z]+ "}"')
    constrained = complete(engine, loaded.tokenizer, PROMPT, n_predict=1, n_probs=5, constraint=spec)
    assert constrained.probs[0].probs == free.probs[0].probs
    assert constrained.content == "{" != free.content
    assert constrained.probs[0].prob < free.probs[0].prob  # "{" is an unlikely token here


def test_lazy_grammar_constrains_from_its_trigger_on(engine, loaded):
    spec = from_fields({"grammar": 'root ::= "was a " [a-z]+ "."', "grammar_lazy": True,
                        "grammar_triggers": [{"type": 2, "value": "was"}]})
    for r in run_all(engine, loaded.tokenizer, [(PROMPT, dict(n_predict=60, sampling=s, constraint=spec))
                                                for s in SAMPLINGS[:2]]):
        assert r.stop_type is StopReason.EOS and re.fullmatch(r".*?was a [a-z]+\.", r.content, re.S), r.content

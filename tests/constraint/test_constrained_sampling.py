"""Constrained generation end to end on the real stories260K forward pass and the real sampler chain:
temperature 0.8, several seeds, the mask applied to the logits before sampling, every answer complete and valid."""
import json
import re

import jsonschema
import numpy as np
import pytest

from slotserve.constraint import (Constraint, ConstraintMasks, GrammarVocab, from_gbnf, from_json_schema,
                                  sample_constrained)
from slotserve.model.forward import Llama, Segment
from slotserve.model.loader import load_model
from slotserve.model.sampling import Sampler, SamplingParams

SEEDS = (1, 2, 3, 4)
N_PREDICT = 160


@pytest.fixture(scope="module")
def lm(stories_path):
    loaded = load_model(stories_path)
    return loaded, Llama(loaded.hparams, loaded.weights), GrammarVocab.from_tokenizer(loaded.tokenizer)


def generate(lm, spec, seed, prompt="Once upon a time", check_eos=False, logit_bias=(), mask_first=False):
    """Sample until an end-of-generation token or N_PREDICT; returns (text, ended, constraint). Sampling is
    in llama.cpp's order (unconstrained first, masked only when refused) unless mask_first."""
    loaded, model, vocab = lm
    tok = loaded.tokenizer
    constraint = Constraint(spec, vocab)
    params = SamplingParams(temperature=0.8, seed=seed, logit_bias=tuple(logit_bias))
    sampler = Sampler(params, tok.n_vocab, tok.eog_ids)
    cache = model.new_cache(512)
    seg = model.forward([Segment(cache, tok.tokenize(prompt))])[0]
    out: list[int] = []
    for _ in range(N_PREDICT):
        logits = np.array(seg.logits[-1], dtype=np.float32)  # logits are (rows, n_vocab)
        if check_eos:  # EOS is let through exactly when the output so far is complete
            allowed = constraint.allowed_mask()
            assert bool(allowed[tok.eos_id]) == constraint.is_accepting(), vocab.spelled(out)
            assert not constraint.is_stopped() or np.flatnonzero(allowed).tolist() == list(tok.eog_ids)
        if mask_first:
            constraint.apply(logits)
            token = sampler.sample(logits)
        else:
            token, _ = sample_constrained(sampler, logits, constraint)
        sampler.accept(token)
        constraint.accept(token)
        if tok.is_eog(token):
            return vocab.spelled(out).decode(), True, constraint
        out.append(token)
        seg = model.forward([Segment(cache, [token])])[0]
    return vocab.spelled(out).decode(), False, constraint


SCHEMAS = {
    "required fields": {
        "type": "object", "required": ["name", "age"],
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}}},
    "enums": {
        "type": "object", "required": ["color", "size"],
        "properties": {"color": {"enum": ["red", "green", "blue"]},
                       "size": {"type": "string", "enum": ["S", "M", "XL"]}, "ok": {"const": True}}},
    "bounded integers and strings": {
        "type": "object", "required": ["n", "code", "word"],
        "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 300},
                       "code": {"type": "string", "pattern": "^[A-Z]{2,4}$"},
                       "word": {"type": "string", "minLength": 3, "maxLength": 8}}},
    "arrays with min and max items": {
        "type": "object", "required": ["tags", "scores"],
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                "minItems": 1, "maxItems": 3},
                       "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                  "minItems": 2, "maxItems": 4}}},
    "nested objects": {
        "type": "object", "required": ["user", "active"],
        "properties": {
            "user": {"type": "object", "required": ["id", "address"],
                     "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                                    "address": {"type": "object", "required": ["city", "zip"],
                                                "properties": {"city": {"type": "string", "maxLength": 10},
                                                               "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}},
            "active": {"type": "boolean"}}},
    "top-level array of objects": {
        "type": "array", "minItems": 1, "maxItems": 2,
        "items": {"type": "object", "required": ["k"], "properties": {"k": {"enum": [1, 2, 3]}}}},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_answers_parse_validate_and_complete(lm, name, seed):
    schema = SCHEMAS[name]
    text, ended, constraint = generate(lm, from_json_schema(schema), seed)
    assert ended and constraint.is_accepting(), f"incomplete after {N_PREDICT} tokens: {text!r}"
    jsonschema.validate(json.loads(text), schema)


# (GBNF, the same language as a Python regular expression)
GRAMMARS = {
    "alternation": ('root ::= "yes" | "no" | "maybe so"\n', r"yes|no|maybe so"),
    "repetition {m,n}": ('root ::= [a-z]{3,6} ("-" [0-9]{1,3}){1,2}\n', r"[a-z]{3,6}(-[0-9]{1,3}){1,2}"),
    "character classes": ('root ::= [A-Z] [a-z0-9_]{2,8} "@" ("x" | "y") "." [a-z]{2,3}\n',
                          r"[A-Z][a-z0-9_]{2,8}@(x|y)\.[a-z]{2,3}"),
    "rules, optional and negated classes": (
        'root ::= item ("," " "? item){0,3}\nitem ::= [0-9]{1,2} | "\\"" [^"\\n]{0,5} "\\""\n',
        r'(?:[0-9]{1,2}|"[^"\n]{0,5}")(?:, ?(?:[0-9]{1,2}|"[^"\n]{0,5}")){0,3}'),
    "lark": ('%llguidance {}\nstart: "(" NUM (" + " NUM){0,2} ")"\nNUM: /[1-9][0-9]?/\n',
             r"\([1-9][0-9]?( \+ [1-9][0-9]?){0,2}\)"),
}


@pytest.mark.parametrize("mask_first", [False, True], ids=["llama.cpp order", "mask first"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", GRAMMARS)
def test_gbnf_answers_match_and_complete(lm, name, seed, mask_first):
    grammar, regex = GRAMMARS[name]
    text, ended, constraint = generate(lm, from_gbnf(grammar), seed, mask_first=mask_first)
    assert ended and constraint.is_accepting(), f"incomplete after {N_PREDICT} tokens: {text!r}"
    assert re.fullmatch(regex, text), text


def test_eos_only_when_accepting_and_only_eos_when_stopped(lm):
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer", "maximum": 50}}}
    text, ended, _ = generate(lm, from_json_schema(schema), 7, check_eos=True, mask_first=True)
    assert ended
    _, ended, _ = generate(lm, from_gbnf('root ::= "a" [0-9]{0,3}\n'), 7, check_eos=True)
    assert ended


def test_any_json_object(lm):
    """response_format json_object: any object. Left alone, stories260K writes keys forever; with closing
    characters favoured through logit_bias (the sampler's own, before the mask) it ends, and validly."""
    vocab = lm[2]
    favour = [(vocab.greedy(b"\"")[0], 4.0), (vocab.greedy(b"}")[0], 12.0)]
    for seed in SEEDS:
        text, ended, _ = generate(lm, from_json_schema({}), seed, logit_bias=favour)
        assert ended, text
        assert isinstance(json.loads(text), dict)


def test_rolled_back_drafts_leave_the_answer_unchanged(lm):
    """Speculative decoding's pattern: tokens accepted ahead and taken back must not disturb the grammar."""
    spec = from_json_schema(SCHEMAS["nested objects"])
    plain, ended, _ = generate(lm, spec, 5)
    assert ended
    _, model, vocab = lm
    rng = np.random.default_rng(0)
    real_accept = Constraint.accept

    def accept_with_drafts(self, token):
        real_accept(self, token)
        n = 0
        for _ in range(int(rng.integers(1, 4))):  # a draft of 1-3 tokens the grammar allows
            allowed = np.flatnonzero(self.allowed_mask())
            if self.is_stopped() or not allowed.size:
                break
            real_accept(self, int(rng.choice(allowed)))
            n += 1
        self.rollback(n)

    Constraint.accept = accept_with_drafts
    try:
        drafted, ended, _ = generate(lm, spec, 5)
    finally:
        Constraint.accept = real_accept
    assert drafted == plain


def test_several_slots_in_one_batched_step(lm):
    """Continuous batching: one forward for all slots, one ConstraintMasks.compute for all their masks."""
    loaded, model, vocab = lm
    tok = loaded.tokenizer
    specs = [from_json_schema(SCHEMAS["enums"]), None, from_gbnf(GRAMMARS["character classes"][0]),
             from_json_schema(SCHEMAS["arrays with min and max items"])]
    constraints = [Constraint(s, vocab) if s else None for s in specs]
    samplers = [Sampler(SamplingParams(temperature=0.8, seed=10 + i), tok.n_vocab, tok.eog_ids) for i in range(4)]
    caches = [model.new_cache(512) for _ in specs]
    segs = model.forward([Segment(c, tok.tokenize("Once upon a time")) for c in caches])
    outs: list[list[int]] = [[] for _ in specs]
    live = set(range(len(specs)))
    masks = ConstraintMasks(vocab)
    try:
        for _ in range(N_PREDICT):
            order = sorted(live)
            logits = np.stack([segs[order.index(i)].logits[-1] for i in order]).astype(np.float32)
            rows = masks.compute([constraints[i] for i in order])  # all masks ahead, in one call
            step = []
            for row, i in enumerate(order):
                token, _ = sample_constrained(samplers[i], logits[row], constraints[i], rows[row])
                samplers[i].accept(token)
                if constraints[i] is not None:
                    constraints[i].accept(token)
                if tok.is_eog(token):
                    live.discard(i)
                else:
                    outs[i].append(token)
                    step.append(Segment(caches[i], [token]))
            if not live - {1}:  # the unconstrained slot may tell its story past N_PREDICT
                break
            segs = model.forward(step)
    finally:
        masks.close()
    assert not live - {1}, [vocab.spelled(o) for o in outs]
    texts = [vocab.spelled(o).decode() for o in outs]
    jsonschema.validate(json.loads(texts[0]), SCHEMAS["enums"])
    assert re.fullmatch(GRAMMARS["character classes"][1], texts[2]), texts[2]
    jsonschema.validate(json.loads(texts[3]), SCHEMAS["arrays with min and max items"])


@pytest.mark.parametrize("spec, regex", [
    # the constrained cases of llama.cpp's tools/server/tests/unit/test_chat_completion.py, answers complete
    (lambda: from_json_schema({"const": "42"}), r'"42"'),
    (lambda: from_json_schema({"items": [{"type": "integer"}]}), r"\[ ?-?[0-9]+ ?\]"),
    (lambda: from_json_schema({"type": "object"}), r"\{.*"),
    (lambda: from_gbnf('root ::= "a"{5,5}'), r"aaaaa"),
])
def test_llama_cpp_suite_cases(lm, spec, regex):
    for seed in SEEDS[:2]:
        text, ended, _ = generate(lm, spec(), seed)
        assert re.fullmatch(regex, text, re.S), text
        assert ended or regex == r"\{.*"

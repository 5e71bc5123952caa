"""Constraint state outside a sampling loop: rollback, drafts, lazy triggers, forks, batch masks, misuse."""
import numpy as np
import pytest

from slotserve.constraint import (Constraint, ConstraintError, ConstraintMasks, GrammarVocab, Trigger, TriggerType,
                                  apply_allowed, from_gbnf, from_json_schema)
from slotserve.model.loader import load_model

SCHEMA = {"type": "object", "required": ["a", "b"],
          "properties": {"a": {"type": "integer", "maximum": 999}, "b": {"enum": ["x", "yz"]}}}


@pytest.fixture(scope="module")
def vocab(stories_path):
    return GrammarVocab.from_tokenizer(load_model(stories_path).tokenizer)


def allowed_ids(c: Constraint) -> list[int]:
    return np.flatnonzero(c.allowed_mask()).tolist()


def feed(c: Constraint, vocab: GrammarVocab, text: bytes) -> list[int]:
    ids = vocab.greedy(text)
    for t in ids:
        c.accept(t)
    return ids


def test_rollback_restores_the_masks(vocab):
    c = Constraint(from_json_schema(SCHEMA), vocab)
    masks = [allowed_ids(c)]
    ids = vocab.greedy(b'{"a": 12, "b": "yz"}')
    for t in ids:
        c.accept(t)
        masks.append(allowed_ids(c))
    assert c.is_accepting() and c.n_accepted == len(ids)
    for n in (1, 3, len(ids) - 2):
        c.rollback(n)
        assert allowed_ids(c) == masks[len(ids) - n] and c.n_accepted == len(ids) - n
        for t in ids[len(ids) - n:]:
            c.accept(t)
    c.rollback(len(ids))
    assert allowed_ids(c) == masks[0] and not c.is_accepting()
    with pytest.raises(ValueError, match="cannot roll back 1 of 0"):
        c.rollback(1)


def test_a_forbidden_token_is_refused_and_leaves_the_state_alone(vocab):
    c = Constraint(from_json_schema(SCHEMA), vocab)
    feed(c, vocab, b'{"a": 1')
    before = allowed_ids(c)
    for bad in (vocab.greedy(b"x")[0], vocab.eog_ids[0]):  # a letter in a number, EOS before the end
        with pytest.raises(ConstraintError, match="does not fit the json_schema"):
            c.accept(bad)
    assert allowed_ids(c) == before and c.n_accepted == len(vocab.greedy(b'{"a": 1'))


def test_draft_prefix_counts_what_the_grammar_allows(vocab):
    c = Constraint(from_gbnf('root ::= "ab" [0-9]{1,3}\n'), vocab)
    good, bad = vocab.greedy(b"ab12"), vocab.greedy(b"x")
    assert c.draft_prefix(good + bad + good) == len(good)
    assert c.n_accepted == 0 and c.draft_prefix(bad) == 0


def test_stopped_grammar_allows_only_eos(vocab):
    c = Constraint(from_gbnf('root ::= "ok"\n'), vocab)
    feed(c, vocab, b"ok")
    assert c.is_accepting() and c.is_stopped()
    assert allowed_ids(c) == list(vocab.eog_ids)
    c.accept(vocab.eog_ids[0])
    c.rollback(1)  # EOS can be taken back like any token
    assert c.is_accepting() and allowed_ids(c) == list(vocab.eog_ids)
    # the same without a mask computed in between (drafts), and where EOS ends a grammar that could go on
    for grammar, text in [('root ::= "ok"\n', b"ok"), ('root ::= "a" [0-9]{0,3}\n', b"a1")]:
        c = Constraint(from_gbnf(grammar), vocab)
        feed(c, vocab, text)
        before = allowed_ids(c)
        c = Constraint(from_gbnf(grammar), vocab)
        feed(c, vocab, text)
        c.accept(vocab.eog_ids[0])
        c.rollback(1)
        assert allowed_ids(c) == before, grammar


def test_fork_is_independent(vocab):
    c = Constraint(from_gbnf('root ::= "a" ("b" | "c")\n'), vocab)
    feed(c, vocab, b"a")
    twin = c.fork()
    feed(twin, vocab, b"b")
    assert twin.is_accepting() and not c.is_accepting() and c.n_accepted == 1
    feed(c, vocab, b"c")
    assert c.is_accepting()


def test_special_tokens_only_where_the_grammar_names_them(vocab):
    c = Constraint(from_gbnf('%llguidance {}\nstart: "x" </s>\n'), vocab)
    assert vocab.greedy(b"x")[0] in allowed_ids(c)
    with pytest.raises(ConstraintError, match="unknown"):
        Constraint(from_gbnf('%llguidance {}\nstart: "x" <|tool_call|>\n'), vocab)  # not in this vocabulary


def lazy(vocab, *triggers):
    spec = from_gbnf('root ::= "<call>" [0-9]{2} "</call>"\n', lazy=True, triggers=tuple(triggers))
    return Constraint(spec, vocab)


def test_lazy_grammar_waits_for_a_word_then_constrains(vocab):
    c = lazy(vocab, Trigger(TriggerType.WORD, "<call>"))
    assert not c.active and c.is_accepting() and len(allowed_ids(c)) == vocab.n_vocab
    n = len(feed(c, vocab, b"Tom said hi <ca"))
    assert not c.active
    feed(c, vocab, b"ll>4")  # the trigger completes inside this text: "<call>4" is replayed into the grammar
    assert c.active and not c.is_accepting()
    assert {vocab.token_bytes[t][0] for t in allowed_ids(c)} <= set(b"0123456789")
    feed(c, vocab, b"2</call>")
    assert c.is_stopped()
    c.rollback(c.n_accepted - n)  # back to before the trigger: waiting, unconstrained again
    assert not c.active and len(allowed_ids(c)) == vocab.n_vocab
    feed(c, vocab, b"ll>")
    assert c.active and not c.is_accepting()


def test_lazy_pattern_starts_at_its_first_capture_group(vocab):
    c = lazy(vocab, Trigger(TriggerType.PATTERN, r"\[TOOL\] *(<call>)"))
    feed(c, vocab, b"so [TOOL]  <call>")
    assert c.active
    feed(c, vocab, b"07</call>")
    assert c.is_stopped()


def test_lazy_full_pattern_must_match_the_whole_output(vocab):
    c = lazy(vocab, Trigger(TriggerType.PATTERN_FULL, r"<call>.*"))
    feed(c, vocab, b"x <call>")
    assert not c.active  # the output does not start with the trigger
    c = lazy(vocab, Trigger(TriggerType.PATTERN_FULL, r"<call>.*"))
    feed(c, vocab, b"<call>1")
    assert c.active


def test_lazy_token_trigger(vocab):
    token = vocab.greedy(b"<")[0]
    c = lazy(vocab, Trigger(TriggerType.TOKEN, "<", token))
    feed(c, vocab, b"abc")
    assert not c.active
    c.accept(token)
    assert c.active
    feed(c, vocab, b"call>55</call>")
    assert c.is_stopped()


def test_lazy_trigger_the_grammar_cannot_start_with(vocab):
    c = lazy(vocab, Trigger(TriggerType.WORD, "CALL"))
    with pytest.raises(ConstraintError, match="rejects its own trigger text 'CALL'"):
        feed(c, vocab, b"CALL")
    with pytest.raises(ConstraintError, match="out of range"):
        lazy(vocab, Trigger(TriggerType.TOKEN, "?", vocab.n_vocab))


def test_batch_masks_equal_single_masks(vocab):
    cs = [Constraint(from_json_schema(SCHEMA), vocab), None, Constraint(from_gbnf('root ::= [a-c]{2}\n'), vocab),
          lazy(vocab, Trigger(TriggerType.WORD, "<call>")), Constraint(from_gbnf('root ::= "<call>" [0-9]\n'), vocab)]
    feed(cs[0], vocab, b'{"a": ')
    masks = ConstraintMasks(vocab)
    try:
        rows = masks.compute(cs)
        assert rows.shape == (5, vocab.n_words) and (rows[1] == -1).all() and (rows[3] == -1).all()
        for c, row in zip(cs, rows):
            if c is not None:
                assert np.flatnonzero(vocab.allowed_from_bitmask(row)).tolist() == allowed_ids(c)
        assert (masks.compute_async(cs).result() == rows).all()
        assert (masks.compute(cs[2:3]) == rows[2:3]).all()  # the single-matcher path
        logits = np.zeros((5, vocab.n_vocab + 3), np.float32)  # a padded output: ids past the vocabulary
        masks.apply(logits, rows)
        assert (logits[1, :vocab.n_vocab] == 0).all() and np.isneginf(logits[:, vocab.n_vocab:]).all()
        assert np.flatnonzero(logits[2] == 0).tolist() == allowed_ids(cs[2])
    finally:
        masks.close()
    one = np.zeros(vocab.n_vocab, np.float32)
    apply_allowed(one, cs[2].allowed_mask())
    assert np.flatnonzero(one == 0).tolist() == allowed_ids(cs[2])


def test_allows_checks_one_token_without_the_mask(vocab):
    c = Constraint(from_gbnf('root ::= "ab" [0-9]\n'), vocab)
    mask = c.allowed_mask()
    for t in range(vocab.n_vocab):
        assert c.allows(t) == bool(mask[t]), t
    feed(c, vocab, b"ab1")
    assert c.allows(vocab.eog_ids[0]) and not c.allows(vocab.greedy(b"2")[0])


def test_sample_constrained_draws_twice_only_when_refused(vocab):
    from slotserve.constraint import sample_constrained
    from slotserve.model.sampling import Sampler, SamplingParams
    c = Constraint(from_gbnf('root ::= "ab" [0-9]\n'), vocab)
    a, x = vocab.greedy(b"a")[0], vocab.greedy(b"x")[0]
    logits = np.zeros(vocab.n_vocab, np.float32)
    logits[a] = 20.0  # the chain picks "a": allowed, the raw logits stand
    params = SamplingParams(temperature=0.8, seed=3)
    token, used = sample_constrained(Sampler(params, vocab.n_vocab), logits, c)
    assert token == a and used is logits
    logits[x] = 40.0  # now "x", refused: masked and drawn again, as llama.cpp's rejection sampling
    sampler, twin = Sampler(params, vocab.n_vocab), Sampler(params, vocab.n_vocab)
    token, used = sample_constrained(sampler, logits, c)
    assert twin.sample(logits) == x
    masked = logits.copy()
    c.apply(masked)
    assert token == twin.sample(masked) == a and np.array_equal(used, masked)
    rows = ConstraintMasks(vocab).compute([c])  # a mask computed ahead gives the same
    assert sample_constrained(Sampler(params, vocab.n_vocab), logits, c, rows[0])[0] == a


GBNF_FEATURES = r"""
# a comment, then rules over several lines
root   ::= greeting ws-opt list-of-items "\n"?
greeting ::= ("Hi" | "Hello") [!.]
list-of-items ::= "[" ws-opt (item (ws-opt "," ws-opt item)*)? ws-opt "]"
item   ::= [a-z]{2,} | "\"" ( [^"\\\x00-\x1f] | "\\" ["\\nt] )* "\"" | [0-9]+ ("." [0-9]{1,3})?
ws-opt ::= [ \t]*
"""


@pytest.mark.parametrize("text, ok", [
    (b'Hi! [ab, "x\\"y", 3.25]', True),
    (b"Hello.[]\n", True),
    (b"Hi! [a]", False),        # {2,}: one letter is too few
    (b"Hey! []", False),
    (b'Hi. ["\x01"]', False),   # a control character inside the string class
])
def test_gbnf_features_convert_faithfully(vocab, text, ok):
    c = Constraint(from_gbnf(GBNF_FEATURES), vocab)
    ids = vocab.greedy(text)
    n = c.draft_prefix(ids)
    assert (n == len(ids) and (feed(c, vocab, text) and c.is_accepting())) == ok, (text, n, len(ids))

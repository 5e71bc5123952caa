"""Sampler chain, checked against straightforward reference computations of llama.cpp's
definitions (src/llama-sampler.cpp). Synthetic logits; no model needed."""
import math

import numpy as np
import pytest

from slotserve.model.sampling import Mt19937Draws, Sampler, SamplingParams

# every filter off, temperature 1: the plain softmax
PLAIN = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def survivors(params, logits, accepted=()):
    """{token: prob} after the whole chain, as llama-server reports it with post_sampling_probs."""
    s = Sampler(SamplingParams(**{**params.__dict__, "post_sampling_probs": True}), len(logits))
    for t in accepted:
        s.accept(t)
    return dict(s.top_probs(np.asarray(logits, dtype=np.float32), len(logits)))


def rand_logits(n=1000, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# -- greedy and reproducibility ----------------------------------------------------------------------------

@pytest.mark.parametrize("temp", [0.0, -1.0])
def test_greedy_is_argmax(temp):
    s = Sampler(SamplingParams(temperature=temp), 1000)
    for seed in range(20):
        x = rand_logits(seed=seed)
        assert s.sample(x) == int(np.argmax(x))


def test_greedy_ties_pick_the_lowest_id():
    x = np.zeros(100, dtype=np.float32)
    x[[7, 3, 50]] = 5.0
    assert Sampler(SamplingParams(temperature=0.0), 100).sample(x) == 3
    assert Sampler(SamplingParams(temperature=0.0, top_k=0, top_p=0.5), 100).sample(x) == 3


@pytest.mark.parametrize("temp", [0.1, 1.0, 5.0, 100.0])
def test_top_k_1_is_greedy_at_any_temperature(temp):
    s = Sampler(SamplingParams(temperature=temp, top_k=1, seed=1), 32000)
    for seed in range(10):
        x = rand_logits(32000, seed=seed)
        assert s.sample(x) == int(np.argmax(x))


def test_sample_leaves_the_callers_logits_alone():
    x = rand_logits()
    before = x.copy()
    p = SamplingParams(repeat_penalty=1.3, presence_penalty=0.5, logit_bias=((1, 2.0),), seed=3)
    s = Sampler(p, x.size, eog_ids=[2])
    s.accept(int(np.argmax(x)))
    s.sample(x)
    s.top_probs(x, 5)
    np.testing.assert_array_equal(x, before)


def test_same_seed_same_choices_different_seed_different_choices():
    seq = [rand_logits(seed=i, scale=1.0) for i in range(300)]

    def run(seed):
        s = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed), 1000)
        return [s.sample(x) for x in seq]

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert run(-1) != run(-1)  # -1 draws a fresh random seed


# -- the filters, each against its definition ---------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_best():
    x = rand_logits(32000, seed=5)
    got = survivors(SamplingParams(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0), x)
    best = np.argsort(-x)[:40]
    assert set(got) == set(best.tolist())
    np.testing.assert_allclose([got[t] for t in best], softmax(x[best]), rtol=1e-5)


def test_top_k_on_ties_is_deterministic_and_exact():
    x = np.round(rand_logits(32000, seed=6), 1)  # many equal values, including at the boundary
    got = survivors(SamplingParams(temperature=1.0, top_k=100, top_p=1.0, min_p=0.0), x)
    kth = np.sort(x)[::-1][99]
    assert len(got) == 100
    assert all(x[t] >= kth for t in got)
    assert set(np.flatnonzero(x > kth)) <= set(got)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # ids 4..0 have probabilities 0.4, 0.3, 0.15, 0.1, 0.05: cumulative 0.4, 0.7, 0.85, 0.95, 1.0
    x = np.log(np.array([0.05, 0.1, 0.15, 0.3, 0.4], dtype=np.float32))
    for top_p, expect in [(0.0, {4}), (0.35, {4}), (0.5, {4, 3}), (0.75, {4, 3, 2}), (0.9, {4, 3, 2, 1})]:
        got = survivors(SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0), x)
        assert set(got) == expect, top_p
        np.testing.assert_allclose([got[t] for t in sorted(expect, reverse=True)],
                                   softmax(x[sorted(expect, reverse=True)]), rtol=1e-6)


def test_top_p_on_a_large_unsorted_vocab_matches_a_full_sort():
    x = rand_logits(32000, seed=7, scale=1.0)  # flat: the best 256 do not reach p, the full sort must run
    for top_p in (0.2, 0.95):
        order = np.argsort(-x)
        cum = np.cumsum(softmax(x)[order])
        expect = set(order[: int(np.searchsorted(cum, top_p)) + 1].tolist())
        assert set(survivors(SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0), x)) == expect


def test_min_p_keeps_tokens_within_a_factor_of_the_best():
    x = rand_logits(2000, seed=8)
    for min_p in (0.05, 0.3):
        p = softmax(x)
        expect = set(np.flatnonzero(p >= min_p * p.max()).tolist())
        assert set(survivors(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=min_p), x)) == expect


def test_typical_p_keeps_tokens_closest_to_the_entropy():
    x = rand_logits(50, seed=9, scale=1.5)
    p = softmax(x)
    entropy = -(p * np.log(p)).sum()
    order = np.argsort(np.abs(-np.log(p) - entropy))
    cum = np.cumsum(p[order])
    for typ in (0.2, 0.6, 0.9):
        expect = set(order[: int(np.argmax(cum > typ)) + 1].tolist())
        got = survivors(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=typ), x)
        assert set(got) == expect


def test_typical_p_can_drop_the_most_likely_token_even_when_greedy():
    x = np.zeros(101, dtype=np.float32)
    x[0] = 0.7  # twice as likely as the 100 others, whose surprisal sits right at the entropy
    p = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.5)
    assert Sampler(p, x.size).sample(x) != 0


def test_chain_order_filters_see_temperature_1_and_top_p_renormalises_after_top_k():
    x = rand_logits(1000, seed=10)
    best = np.argsort(-x)
    for temp in (0.3, 3.0):
        got = survivors(SamplingParams(temperature=temp, top_k=20, top_p=0.6, min_p=0.1), x)
        cand = best[:20]
        q = softmax(x[cand])  # top_p on the top_k survivors, temperature 1
        cand = cand[: int(np.searchsorted(np.cumsum(q), 0.6)) + 1]
        q = softmax(x[cand])
        cand = cand[q >= 0.1 * q.max()]
        assert set(got) == set(cand.tolist())
        np.testing.assert_allclose([got[t] for t in cand], softmax(x[cand] / temp), rtol=1e-5)


def test_empirical_distribution_at_temperature_1_is_the_softmax():
    x = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], dtype=np.float32)
    s = Sampler(SamplingParams(**{**PLAIN.__dict__, "seed": 1234}), x.size)
    n = 40000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=x.size)
    p = softmax(x)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 4.5 * sigma), (counts, n * p)


# -- penalties, bias, ignore_eos -------------------------------------------------------------------------------

def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    x = np.array([2.0, -1.0, 3.0, -2.0, 0.5, 0.0], dtype=np.float32)
    p = SamplingParams(**{**PLAIN.__dict__, "repeat_penalty": 2.0})
    got = survivors(p, x, accepted=[0, 1, 0])
    ref = x.copy()
    ref[0], ref[1] = 2.0 / 2.0, -1.0 * 2.0  # counted once each, whatever the count
    np.testing.assert_allclose([got[t] for t in range(6)], softmax(ref), rtol=1e-6)


def test_presence_and_frequency_penalties_subtract_by_count():
    x = rand_logits(50, seed=11)
    p = SamplingParams(**{**PLAIN.__dict__, "presence_penalty": 0.7, "frequency_penalty": 0.3})
    got = survivors(p, x, accepted=[5, 5, 5, 9])
    ref = x.astype(np.float64)
    ref[5] -= 3 * 0.3 + 0.7
    ref[9] -= 1 * 0.3 + 0.7
    np.testing.assert_allclose([got[t] for t in range(50)], softmax(ref), rtol=1e-5)


def test_penalty_window_holds_the_last_repeat_last_n_tokens_including_the_prompt():
    x = np.zeros(10, dtype=np.float32)
    x[:4] = 1.0
    p = SamplingParams(**{**PLAIN.__dict__, "repeat_penalty": 4.0, "repeat_last_n": 3, "post_sampling_probs": True})
    s = Sampler(p, 10)
    s.accept_prompt([0, 1, 2])  # llama-server feeds the prompt into the window before the first sample
    s.accept(3)  # pushes token 0 out
    probs = dict(s.top_probs(x, 10))
    ref = x.copy()
    ref[[1, 2, 3]] = 0.25
    np.testing.assert_allclose([probs[t] for t in range(10)], softmax(ref), rtol=1e-6)
    # repeat_last_n = 0 disables the penalties altogether
    s0 = Sampler(SamplingParams(**{**p.__dict__, "repeat_last_n": 0}), 10)
    s0.accept_prompt([0, 1, 2, 3])
    np.testing.assert_allclose([dict(s0.top_probs(x, 10))[t] for t in range(10)], softmax(x), rtol=1e-6)


def test_logit_bias_applies_before_the_repeat_penalty():
    x = np.array([2.0, 2.5, 0.0], dtype=np.float32)
    p = SamplingParams(**{**PLAIN.__dict__, "repeat_penalty": 2.0, "logit_bias": ((0, 2.0), (0, 0.5), (7, 9.0))})
    got = survivors(p, x, accepted=[0])
    ref = np.array([(2.0 + 2.5) / 2.0, 2.5, 0.0])  # duplicate ids add up; id 7 is outside the vocab, dropped
    np.testing.assert_allclose([got[t] for t in range(3)], softmax(ref), rtol=1e-6)


def test_banned_token_and_ignore_eos_are_never_sampled():
    x = rand_logits(100, seed=12)
    x[[3, 4]] = 50.0
    banned = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5, logit_bias=((3, -math.inf),))
    s = Sampler(banned, 100, eog_ids=[4])
    assert {s.sample(x) for _ in range(200)} == {4}  # eog is only banned with ignore_eos
    s = Sampler(SamplingParams(**{**banned.__dict__, "ignore_eos": True}), 100, eog_ids=[4])
    draws = [s.sample(x) for _ in range(500)]
    assert 3 not in draws and 4 not in draws
    g = Sampler(SamplingParams(ignore_eos=True, temperature=0.0, logit_bias=((3, -math.inf),)), 100, eog_ids=[4])
    assert g.sample(x) not in (3, 4)


# -- what completion_probabilities reports ----------------------------------------------------------------------

@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_default_probs_are_the_raw_softmax_even_with_bias_penalties_and_greedy(temp):
    x = rand_logits(32000, seed=13)
    p = SamplingParams(temperature=temp, repeat_penalty=1.5, logit_bias=((int(np.argmax(x)), -math.inf),))
    s = Sampler(p, x.size)
    s.accept(int(np.argsort(-x)[1]))
    top = s.top_probs(x, 5)
    q = softmax(x)
    best = np.argsort(-x)[:5]
    assert [t for t, _ in top] == best.tolist()
    np.testing.assert_allclose([v for _, v in top], q[best], rtol=1e-5)
    tok = s.sample(x)
    assert s.token_prob(x, tok) == pytest.approx(q[tok], rel=1e-5)


def test_post_sampling_probs_for_greedy_is_the_chosen_token_alone():
    x = rand_logits(1000, seed=14)
    s = Sampler(SamplingParams(temperature=0.0, post_sampling_probs=True), 1000)
    assert s.top_probs(x, 10) == [(int(np.argmax(x)), 1.0)]
    assert s.token_prob(x, s.sample(x)) == 1.0


def test_post_sampling_probs_are_sorted_and_cover_the_survivors():
    x = rand_logits(1000, seed=15)
    s = Sampler(SamplingParams(post_sampling_probs=True, seed=2), 1000)  # defaults: top_k 40, top_p .95, min_p .05
    top = s.top_probs(x, 1000)
    vals = [v for _, v in top]
    assert 1 <= len(top) <= 40 and vals == sorted(vals, reverse=True)
    assert sum(vals) == pytest.approx(1.0)
    assert s.top_probs(x, 3) == top[:3]
    tok = s.sample(x)
    assert tok in dict(top) and s.token_prob(x, tok) == dict(top)[tok]


def test_post_sampling_probs_describe_the_draw_whether_reported_before_or_after_accept():
    x = rand_logits(1000, seed=16)
    p = SamplingParams(post_sampling_probs=True, repeat_penalty=3.0, top_k=0, top_p=1.0, min_p=0.0, seed=4)
    before = Sampler(p, 1000)
    tok = before.sample(x)
    expect = before.top_probs(x, 5), before.token_prob(x, tok)
    after = Sampler(p, 1000)
    assert after.sample(x) == tok
    after.accept(tok)  # llama-server accepts first, then reports the candidates the token was drawn from
    assert (after.top_probs(x, 5), after.token_prob(x, tok)) == expect
    assert expect[1] == pytest.approx(softmax(x / 0.8)[tok])  # the window was empty at the draw


def test_draws_follow_std_mt19937_and_libstdcxx_canonical_doubles():
    """The C++ standard fixes std::mt19937's 10000th output for the default seed 5489: 4123659995.
    The first is 3499211612 (both from the standard and MT19937's reference code)."""
    draws = Mt19937Draws(5489)
    raw = [draws._rng.getrandbits(32) for _ in range(10000)]
    assert raw[0] == 3499211612 and raw[9999] == 4123659995
    again = Mt19937Draws(5489)
    # a double from two outputs, the first as the low word (libstdc++'s generate_canonical)
    assert again.next() == (raw[0] + raw[1] * 2.0**32) / 2.0**64
    assert again.next() == (raw[2] + raw[3] * 2.0**32) / 2.0**64

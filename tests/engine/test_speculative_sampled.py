"""Speculative drafts for sampled requests: the output distribution is the sampler's, and seeds reproduce.

The rule (engine/speculative.py): a deterministic draft token x is accepted iff the row's own sample is x,
which accepts with probability p(x) and otherwise yields p with x removed, renormalized. The tests check
that statistically, at a stated level, with a check that the same test rejects the classic mistake, and
then on stories260K end to end (with drafts against without), plus run-to-run reproducibility.
"""
import numpy as np
import pytest

from slotserve.engine.emit import choose
from slotserve.engine.speculative import verify
from slotserve.model.sampling import Sampler, SamplingParams

from chi_square import goodness_of_fit, homogeneity
from engine_helpers import complete, loaded, new_engine  # noqa: F401 (loaded: a fixture)

ALPHA = 1e-3  # a correct rule fails a test at this level once in a thousand runs; every seed here is fixed
SAMPLED = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
# a repeated sentence: prompt lookup drafts its continuation at nearly every step
REPETITIVE = "Tom had a big ball. Tom had a big ball. Tom had a big ball. Tom had a"
DEFAULT_CHAIN = SamplingParams(temperature=0.7)  # top_k 40, top_p 0.95, min_p 0.05: llama-server's chain


class Pick:
    def __init__(self, token):
        self.token = token


def sampler_choice(sampler: Sampler):
    """choose() as the engine makes it, without a generation: sample from the chain, accept the token."""
    def pick(row):
        token = sampler.sample(row)
        sampler.accept(token)
        return Pick(token)
    return pick


ROW = np.log(np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01], np.float32))
DRAFT = 1  # p(x) = 0.2: accepted about one time in five


def first_token_counts(rule, n: int) -> dict:
    counts: dict = {}
    for seed in range(n):
        token = rule(seed)
        counts[token] = counts.get(token, 0) + 1
    return counts


def target_probs() -> dict:
    ids, probs = Sampler(SAMPLED, ROW.size).distribution(ROW)
    return {int(i): float(p) for i, p in zip(ids, probs)}


def verified(seed: int) -> int:
    """The first token verify() delivers for a one-token draft over the row (the row after it is not reached
    unless the draft is accepted)."""
    rows = np.stack([ROW, ROW])
    return verify([DRAFT], rows, sampler_choice(Sampler(SamplingParams(**{**SAMPLED.__dict__, "seed": seed}),
                                                        ROW.size)))[0].token


def test_the_verified_token_follows_the_samplers_distribution():
    stat, df, p_value = goodness_of_fit(first_token_counts(verified, 4000), target_probs())
    assert df == ROW.size - 1
    assert p_value > ALPHA, f"chi-square {stat:.1f} with {df} df: p = {p_value:.2g}"


def test_the_same_test_rejects_a_rule_that_keeps_the_draft_in_the_residual():
    """The classic mistake: accept x with probability p(x), else sample from p itself (x left in). Then x comes
    out with probability p + (1 - p) p = 0.36 instead of 0.2: the test above must see it."""
    p = target_probs()
    ids, probs = np.array(list(p)), np.array(list(p.values()))

    def wrong(seed: int) -> int:
        rng = np.random.default_rng(seed)
        return DRAFT if rng.random() < p[DRAFT] else int(rng.choice(ids, p=probs))

    def explicit(seed: int) -> int:  # the textbook rule, written out: it must pass where the wrong one fails
        rng = np.random.default_rng(seed)
        if rng.random() < p[DRAFT]:
            return DRAFT
        rest = np.where(ids == DRAFT, 0.0, probs)
        return int(rng.choice(ids, p=rest / rest.sum()))

    assert goodness_of_fit(first_token_counts(wrong, 4000), p)[2] < ALPHA
    assert goodness_of_fit(first_token_counts(explicit, 4000), p)[2] > ALPHA


def test_a_verified_run_draws_one_uniform_per_token_as_plain_decoding():
    """The coupling behind reproducibility: over identical rows, verify() picks exactly the tokens plain
    decoding picks with the same seed, whatever the draft, and stops at the first refuted one."""
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(6, 32)).astype(np.float32)
    params = SamplingParams(temperature=0.9, seed=1234, repeat_penalty=1.3)
    plain = Sampler(params, 32)
    plain_tokens = [plain.sample(r) for r in rows]
    for t in plain_tokens:
        plain.accept(t)  # (sample-then-accept order matters only with penalties; here plain ignores it)
    for draft in (plain_tokens[:5], [31] * 5, plain_tokens[:2] + [31, 31, 31]):
        sampler = Sampler(params, 32)
        chosen = [c.token for c in verify(draft, rows, sampler_choice(sampler))]
        expected = Sampler(params, 32)
        reference = []
        for r in rows[:len(chosen)]:
            reference.append(expected.sample(r))
            expected.accept(reference[-1])
        assert chosen == reference
        n_match = next((i for i, (a, b) in enumerate(zip(draft, reference)) if a != b), len(draft))
        assert len(chosen) == n_match + 1


# ---- end to end on stories260K --------------------------------------------------------------------------------

def generate(eng, lm, seeds, speculative: bool, n_predict: int, **sampling) -> list[tuple[int, ...]]:
    """Each seed's continuation of REPETITIVE (its prompt stays cached: only the last token is evaluated again)."""
    params = {**DEFAULT_CHAIN.__dict__, **sampling}
    return [tuple(complete(eng, lm.tokenizer, REPETITIVE, n_predict=n_predict, speculative=speculative,
                           sampling=SamplingParams(**{**params, "seed": s})).tokens)
            for s in seeds]


@pytest.fixture(scope="module")
def engine(loaded):
    eng = new_engine(loaded, n_parallel=1, n_ctx_slot=256)
    yield eng
    eng.stop()


N_RUNS = 1000  # per arm (about 25 ms each on stories260K)


def test_drafts_leave_the_distribution_of_sampled_continuations_unchanged(engine, loaded):
    """Independent seeds for the two arms, so this is a test of distributions, not of the seed coupling:
    the first 4 tokens of a sampled continuation, as joint outcomes, with and without prompt-lookup drafts."""
    before = engine.snapshot.stats
    with_drafts = generate(engine, loaded, range(N_RUNS), True, 4)
    after = engine.snapshot.stats
    without = generate(engine, loaded, range(N_RUNS, 2 * N_RUNS), False, 4)
    drafted = after.n_draft_tokens - before.n_draft_tokens
    accepted = after.n_draft_accepted - before.n_draft_accepted
    assert drafted > N_RUNS // 2 and 0 < accepted < drafted  # drafts were proposed, some kept, some refused
    stat, df, p_value = homogeneity(with_drafts, without)
    assert df >= 5  # several distinct continuations: a meaningful test
    assert p_value > ALPHA, f"chi-square {stat:.1f} with {df} df: p = {p_value:.2g}"
    # the same test tells apart a modest change of the sampler (power check at this sample size)
    hotter = generate(engine, loaded, range(2 * N_RUNS, 3 * N_RUNS), False, 4, temperature=0.9)
    assert homogeneity(hotter, without)[2] < ALPHA


def test_seeded_sampled_runs_reproduce_and_match_plain_decoding(engine, loaded):
    seeds = range(40)
    first = generate(engine, loaded, seeds, True, 24)
    again = generate(engine, loaded, seeds, True, 24)
    plain = generate(engine, loaded, seeds, False, 24)
    assert first == again
    assert first == plain  # one uniform per token either way (see engine/speculative.py)
    assert len(set(first)) > 10  # sampled: the seeds give different texts

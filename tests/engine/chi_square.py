"""Pearson chi-square tests with their exact p-values (scipy is not a dependency: the regularized incomplete
gamma function, as in Numerical Recipes' gammp/gammq, is all they need)."""
import math
from collections import Counter


def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for X ~ chi-square with df degrees of freedom: Q(df/2, stat/2)."""
    a, x = df / 2.0, stat / 2.0
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_front))
    # continued fraction for Q(a, x) (modified Lentz)
    tiny = 1e-300
    b, c, d = x + 1 - a, 1 / tiny, 1 / (x + 1 - a)
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h * math.exp(log_front)


def goodness_of_fit(counts: dict, probs: dict, min_expected: float = 5.0) -> tuple[float, int, float]:
    """(statistic, df, p-value) of observed counts against exact probabilities; categories expected fewer than
    min_expected times are pooled into one (the chi-square approximation needs that)."""
    n = sum(counts.values())
    cells, pooled_obs, pooled_p = [], 0, 0.0
    for key, p in probs.items():
        if n * p >= min_expected:
            cells.append((counts.get(key, 0), n * p))
        else:
            pooled_obs, pooled_p = pooled_obs + counts.get(key, 0), pooled_p + p
    pooled_obs += sum(c for k, c in counts.items() if k not in probs)  # outcomes of probability 0
    if pooled_p > 0 or pooled_obs:
        cells.append((pooled_obs, max(n * pooled_p, 1e-12)))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return stat, df, chi2_sf(stat, df)


def homogeneity(a: list, b: list, min_expected: float = 5.0) -> tuple[float, int, float]:
    """(statistic, df, p-value) of a two-sample chi-square test that samples a and b come from one distribution.
    Outcomes expected fewer than min_expected times in either sample are pooled into one category."""
    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    n = na + nb
    rows, pool_a, pool_b = [], 0, 0
    for key in set(ca) | set(cb):
        total = ca[key] + cb[key]
        if min(na, nb) * total / n >= min_expected:
            rows.append((ca[key], cb[key]))
        else:
            pool_a, pool_b = pool_a + ca[key], pool_b + cb[key]
    if pool_a + pool_b:
        rows.append((pool_a, pool_b))
    stat = 0.0
    for oa, ob in rows:
        total = oa + ob
        for obs, size in ((oa, na), (ob, nb)):
            expected = size * total / n
            stat += (obs - expected) ** 2 / expected
    df = len(rows) - 1
    return stat, df, chi2_sf(stat, df)

"""Statistics of the report: Student-t quantiles and confidence intervals of differences."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

CI_LEVEL = 0.95

# Student-t quantiles without scipy: scipy is a large compiled dependency that reatt would pull
# in for one function. The t distribution's CDF is a regularized incomplete beta function,
# I_x(df/2, 1/2) with x = df / (df + t^2), which the continued fraction below (Lentz's method,
# as in Numerical Recipes' betacf) evaluates to ~1e-14 for any real df > 0 (Welch's df is not
# an integer); the quantile is found by bisection on that CDF. Above df = 1000 the normal
# quantile's Cornish-Fisher expansion takes over (exact to ~1e-12 there). Tests check both
# against the printed t tables and against a direct integration of the t density.


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny = 1e-300

    def clamp(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        for coef in (even, odd):
            d = 1.0 / clamp(1.0 + coef * d)
            c = clamp(1.0 + coef / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, real) degrees of freedom."""
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (t_quantile(0.975, 10)
    = 2.228...), accurate to ~1e-10."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > 1000:  # lgamma cancels badly in betainc for huge df; the expansion is exact to ~1e-12
        return _cornish_fisher(p, df)
    lo, hi = 0.0, max(2.0, 2.0 * statistics.NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:  # the t tails are heavier than the normal's: widen the bracket
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _cornish_fisher(p: float, df: float) -> float:
    """The t quantile as the normal one plus its expansion in 1/df (Abramowitz & Stegun 26.7.5)."""
    z = statistics.NormalDist().inv_cdf(p)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


def mean(xs: Sequence[float]) -> float:
    """The arithmetic mean (exactly rounded sum); NaN for no values."""
    return math.fsum(xs) / len(xs) if xs else math.nan


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN below two values."""
    return statistics.stdev(xs) if len(xs) >= 2 else math.nan


@dataclass(frozen=True)
class Diff:
    """The difference of a variant to the reference, with its confidence interval."""

    delta: float
    low: float = math.nan
    high: float = math.nan
    method: str = ""  # "paired", "Welch", "reference" or "" (no interval)
    df: float = math.nan
    se: float = math.nan  # the standard error of delta


def paired_diff(variant: dict[int, float], reference: dict[int, float], level: float = CI_LEVEL) -> Diff:
    """Mean difference over the seeds both have, with a paired-t interval (needs >= 2 pairs).

    The same seed gives the same initialization and data order to every variant, so the
    per-seed differences do not carry that seed-to-seed noise; the interval is much tighter
    than one comparing two independent means would be."""
    seeds = sorted(set(variant) & set(reference))
    diffs = [variant[s] - reference[s] for s in seeds]
    delta = mean(diffs)
    if len(diffs) < 2:
        return Diff(delta)
    se = std(diffs) / math.sqrt(len(diffs))
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * se
    return Diff(delta, delta - half, delta + half, "paired", len(diffs) - 1, se)


def welch_diff(variant: Sequence[float], reference: Sequence[float], level: float = CI_LEVEL) -> Diff:
    """Difference of two independent means, with Welch's interval (needs >= 2 values each)."""
    delta = mean(variant) - mean(reference)
    if len(variant) < 2 or len(reference) < 2:
        return Diff(delta)
    va, vb = std(variant) ** 2 / len(variant), std(reference) ** 2 / len(reference)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Diff(delta, delta, delta, "Welch", math.inf, 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(variant) - 1) + vb**2 / (len(reference) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Diff(delta, delta - half, delta + half, "Welch", df, se)


def compare(variant: dict[int, float], reference: dict[int, float], level: float = CI_LEVEL) -> Diff:
    """Paired by seed when at least two seeds are shared, else Welch (values keyed by seed)."""
    if len(set(variant) & set(reference)) >= 2:
        return paired_diff(variant, reference, level)
    return welch_diff(list(variant.values()), list(reference.values()), level)


def _has_se(diff: Diff) -> bool:
    """Whether the diff carries what a t interval needs: a t method, a finite se and a df > 0."""
    return diff.method in ("paired", "Welch") and math.isfinite(diff.se) and diff.df > 0


def p_value(diff: Diff) -> float:
    """The two-sided p-value of "Δ = 0" from Student's t with the diff's df; NaN without an
    interval; with se = 0, 1.0 for a Δ of 0 and 0.0 for any other."""
    if not _has_se(diff) or math.isnan(diff.delta):
        return math.nan
    if diff.se == 0.0:
        return 1.0 if diff.delta == 0.0 else 0.0
    return min(1.0, 2.0 * t_cdf(-abs(diff.delta) / diff.se, diff.df))


def interval(diff: Diff, level: float) -> Diff:
    """The same difference with its interval at another confidence ``level``; NaN bounds where it
    has none (no se to rebuild it from)."""
    if not _has_se(diff):
        return replace(diff, low=math.nan, high=math.nan)
    half = 0.0 if diff.se == 0.0 else t_quantile(0.5 + level / 2, diff.df) * diff.se
    return replace(diff, low=diff.delta - half, high=diff.delta + half)


@dataclass(frozen=True)
class Holm:
    """One comparison of a family after Holm–Bonferroni."""

    p_adjusted: float
    level: float  # the confidence level of its interval (step-down)
    rejected: bool


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[Holm]:
    """Holm–Bonferroni over the finite ``p_values`` (NaN ones are not in the family: their result
    is NaN, NaN, not rejected), in input order; ties in p keep their input order. Adjusted
    p(i) = max over j <= i of min(1, (m - j + 1) p(j)), ranks ascending; rejected iff <= alpha.

    The levels make each interval agree with its decision: rank i before the first hypothesis
    not rejected (rank k) gets 1 - alpha / (m - i + 1); rank k and every later one get
    1 - alpha / (m - k + 1), where their intervals include 0 (their p is above that level's
    alpha). With m = 1 it is the plain 1 - alpha interval."""
    family = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))  # ties: input order
    m = len(family)
    out = [Holm(math.nan, math.nan, False)] * len(p_values)
    running, stopped = 0.0, None
    for rank, (p, i) in enumerate(family, start=1):
        running = max(running, min(1.0, (m - rank + 1) * p))
        rejected = running <= alpha
        if not rejected and stopped is None:
            stopped = rank
        level = 1.0 - alpha / (m - (rank if stopped is None else stopped) + 1)
        out[i] = Holm(running, level, rejected)
    return out


def min_detectable(sigma: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |Δ| a two-sided paired t-test at ``alpha`` over ``n`` pairs, whose
    differences have std ``sigma``, resolves with probability ``power``:
    (t(1 - alpha/2, n-1) + t(power, n-1)) sigma / sqrt(n). NaN below two pairs."""
    if n < 2:
        return math.nan
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sigma / math.sqrt(n)


def seeds_needed(
    delta: float, sigma: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000
) -> int | None:
    """The fewest pairs (>= 2) that resolve ``delta`` (see ``min_detectable``): 2 where sigma is
    0; None for a Δ of 0 or where more than ``max_n`` would be needed."""
    if delta == 0 or math.isnan(delta) or math.isnan(sigma):
        return None
    if sigma == 0:
        return 2

    def enough(n: int) -> bool:
        return min_detectable(sigma, n, alpha, power) <= abs(delta)

    return _first_true(enough, 2, max_n)


def _first_true(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest n in [lo, hi] with ``pred(n)`` for a ``pred`` false then true (monotone), or
    None: doubling from ``lo`` brackets it, bisection finds it (O(log n) calls, most at small n)."""
    if hi < lo:
        return None
    if pred(lo):
        return lo
    bad, good = lo, lo
    while good < hi:  # invariant: pred(bad) is false
        good = min(2 * good, hi)
        if pred(good):
            break
        bad = good
    else:
        return None
    while good - bad > 1:  # invariant: pred(bad) false, pred(good) true
        mid = (bad + good) // 2
        bad, good = (bad, mid) if pred(mid) else (mid, good)
    return good

"""The statistics of the result tables and the paper's claims, on plain numbers: whether
seeds score clearly above the majority class, paired tests and their intervals, the
smallest detectable difference, Holm's adjustment, how alike kept layers are, and what a
claim's numbers say of it."""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05


def at_chance(values: list[float], majority: float | None) -> bool:
    """Whether the seeds' mean is not above the majority-class score by more than two
    standard errors (one seed: whether it is not above it). A one-sample t-test would be
    nearly powerless with the 2 to 5 seeds of a cell (1 to 4 degrees of freedom)."""
    if majority is None or not values:
        return False
    if len(values) == 1:
        return values[0] <= majority
    se = statistics.stdev(values) / math.sqrt(len(values))
    return statistics.mean(values) - 2 * se <= majority


def tests(pairs: list) -> tuple[np.ndarray, float, float]:
    """The differences in points, the paired t-test's p and the Wilcoxon test's p (nan
    where a test is undefined: one pair, or no spread). The differences are rounded to
    1e-9 points, so that differences equal in size tie whatever their sign (computed as
    (x - y) * 100 they may differ in the last bits), as Wilcoxon's ranks need."""
    d = np.round(np.array([x - y for x, y, _ in pairs]) * 100, 9)
    n = len(d)
    t_p = stats.ttest_rel([x for x, _, _ in pairs], [y for _, y, _ in pairs]).pvalue \
        if n > 1 and np.any(d != d[0]) else math.nan
    try:
        w_p = stats.wilcoxon(d).pvalue if n > 1 and np.any(d != 0) else math.nan
    except ValueError:
        w_p = math.nan
    return d, t_p, w_p


def interval(d: np.ndarray) -> tuple[float, float]:
    """The 95% confidence interval of the mean of the paired differences ``d`` (t
    distribution; nan for fewer than two pairs or no spread)."""
    n = len(d)
    if n < 2 or not np.any(d != d[0]):
        return math.nan, math.nan
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def detectable(d: np.ndarray, power: float = 0.8) -> float:
    """The smallest mean difference (points) that a two-sided paired t-test at ``ALPHA``
    over ``len(d)`` pairs with the spread of ``d`` detects with probability ``power``
    (the noncentral t distribution; nan for fewer than two pairs or no spread)."""
    n = len(d)
    if n < 2 or not np.any(d != d[0]):
        return math.nan
    sd, df = float(d.std(ddof=1)), n - 1
    crit = stats.t.ppf(1 - ALPHA / 2, df)

    def missing_power(delta):
        nc = delta * math.sqrt(n) / sd
        # The far tail is below 1e-17 where scipy gives up on it (nan).
        far = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0))
        return stats.nct.sf(crit, df, nc) + far - power

    high = (crit + 3) * sd / math.sqrt(n)
    while missing_power(high) < 0:  # few pairs have heavy tails: widen the bracket
        high *= 2
    return float(optimize.brentq(missing_power, 0.0, high))


def claim_verdict(expect: str, mean: float, p: float, low: float = math.nan,
                  high: float = math.nan, paper: float | None = None,
                  smallest: float = math.nan) -> str:
    """What the pairs say of a claim that ``a`` is ``expect`` against ``b`` (``equal``: on
    par; ``not lower``: on par or better), from ``p`` (Holm's, for the claims table), the
    95% interval ``low``..``high`` of the mean difference and the paper's reported
    difference ``paper`` (points) where the claim gives one: "agrees" / "disagrees" only
    where ``p < ALPHA``; "excludes the paper's effect" where the interval lies wholly on
    the near side of the paper's difference; otherwise "cannot tell", with the smallest
    difference the pairs would detect (``smallest``)."""
    if math.isnan(p):
        return "cannot tell (too few pairs)"
    if p < ALPHA:
        higher = mean > 0
        if expect == "equal":
            return f"disagrees ({'higher' if higher else 'lower'})"
        if expect == "not lower":
            return "agrees (higher)" if higher else "disagrees"
        return "agrees" if higher == (expect == "higher") else "disagrees"
    if paper is not None and not math.isnan(high) and (
            (paper > 0 and high < paper) or (paper < 0 and low > paper)):
        return f"excludes the paper's effect ({paper:+.2f})"
    return ("cannot tell" if math.isnan(smallest) else
            f"cannot tell (detectable: {smallest:.1f} points)")


def layer_agreement(runs: list[tuple[str, list[int]]], permutations: int = 10000) -> str:
    """Whether runs of one task keep more alike layers than runs of different tasks: the
    mean Jaccard similarity of the kept layers over pairs of runs of the same task against
    pairs of different tasks, and a one-sided permutation test that shuffles the tasks
    over the runs (a fixed seed, so the page is the same each time). Empty when there are
    no pairs of both kinds."""
    tasks = np.array([t for t, _ in runs])
    sets = [set(layers) for _, layers in runs]
    n = len(runs)
    jac = np.array([[len(a & b) / len(a | b) if a | b else 1.0 for b in sets] for a in sets])
    upper = np.triu(np.ones((n, n), bool), 1)

    def gap(labels):
        same = (labels[:, None] == labels[None, :]) & upper
        other = ~(labels[:, None] == labels[None, :]) & upper
        return jac[same].mean() - jac[other].mean(), jac[same].mean(), jac[other].mean()

    same_pairs = ((tasks[:, None] == tasks[None, :]) & upper).sum()
    if n < 3 or same_pairs == 0 or same_pairs == upper.sum():
        return ""
    observed, within, between = gap(tasks)
    rng = np.random.default_rng(0)
    hits = sum(gap(rng.permutation(tasks))[0] >= observed for _ in range(permutations))
    p = (hits + 1) / (permutations + 1)
    alike = ("more alike within a task than between tasks" if p < ALPHA else
             "no more alike within a task than between tasks")
    return (f"; the kept layers are {alike} (Jaccard {within:.3f} against {between:.3f}, "
            f"permutation p {fmt_p(p)})")


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``ps`` for testing them as one family (statsmodels'
    ``multipletests``): the k-th smallest of m p-values is multiplied by m - k + 1, capped
    at 1 and kept at least as large as the adjusted values before it (nan stays nan and is
    not counted)."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(ps) if not math.isnan(p)]
    out = [math.nan] * len(ps)
    if tested:
        adjusted = multipletests([ps[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, adjusted):
            out[i] = float(p)
    return out


def fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"

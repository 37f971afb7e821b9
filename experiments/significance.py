"""The statistics of the result tables and the paper's claims, on plain numbers: whether
seeds score clearly above the majority class, paired tests and their intervals, the
smallest detectable difference, Holm's adjustment, how alike kept layers are, and what a
claim's numbers say of it."""

from __future__ import annotations

import dataclasses
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
    return detectable_by(float(d.std(ddof=1)) / math.sqrt(n), n - 1, power)


def detectable_by(se: float, df: float, power: float = 0.8) -> float:
    """The smallest true difference that a two-sided t-test at ``ALPHA`` of an estimate
    with standard error ``se`` and ``df`` degrees of freedom detects with probability
    ``power``."""
    crit = stats.t.ppf(1 - ALPHA / 2, df)

    def missing_power(delta):
        nc = delta / se
        # The far tail is below 1e-17 where scipy gives up on it (nan).
        far = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0))
        return stats.nct.sf(crit, df, nc) + far - power

    high = (crit + 3) * se
    while missing_power(high) < 0:  # few pairs have heavy tails: widen the bracket
        high *= 2
    return float(optimize.brentq(missing_power, 0.0, high))


@dataclasses.dataclass(frozen=True)
class TaskAverage:
    """The difference of task averages (the paper's estimand: each task's mean paired
    difference, then their unweighted mean over tasks), in points, with its standard error
    ``se`` = sqrt(sum_t s_t^2 / n_t) / T over the T tasks (s_t the spread of task t's n_t
    differences over seeds) and Welch-Satterthwaite degrees of freedom ``df``; ``p`` is the
    two-sided t-test of a zero difference. With one task this is the paired t-test.
    ``left_out``: tasks with a single pair, whose spread is unknown (not averaged)."""

    mean: float
    se: float
    df: float
    p: float
    tasks: int
    pairs: int
    left_out: tuple[str, ...] = ()

    def interval(self, level: float = 1 - ALPHA) -> tuple[float, float]:
        """The two-sided ``level`` t interval (nan without spread)."""
        if not self.se > 0:
            return math.nan, math.nan
        half = float(stats.t.ppf(1 - (1 - level) / 2, self.df)) * self.se
        return self.mean - half, self.mean + half

    def detectable(self, power: float = 0.8) -> float:
        return detectable_by(self.se, self.df, power) if self.se > 0 else math.nan


def task_average(per_task: dict[str, np.ndarray]) -> TaskAverage:
    """:class:`TaskAverage` of each task's paired differences (points)."""
    used = {t: np.asarray(d, float) for t, d in per_task.items() if len(d) >= 2}
    left_out = tuple(t for t, d in per_task.items() if len(d) < 2)
    if not used:
        return TaskAverage(math.nan, math.nan, math.nan, math.nan, 0, 0, left_out)
    means = [float(d.mean()) for d in used.values()]
    shares = [float(d.var(ddof=1)) / len(d) for d in used.values()]  # s_t^2 / n_t
    mean = float(np.mean(means))
    se = math.sqrt(sum(shares)) / len(used)
    pairs = sum(len(d) for d in used.values())
    if not se > 0:
        return TaskAverage(mean, 0.0, math.nan, math.nan, len(used), pairs, left_out)
    df = sum(shares) ** 2 / sum(v ** 2 / (len(d) - 1) for v, d in zip(shares, used.values()))
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return TaskAverage(mean, se, df, p, len(used), pairs, left_out)


def welch(a, b, level: float = 1 - ALPHA) -> tuple[float, float, float, float]:
    """``mean(a) - mean(b)`` of two independent samples with Welch's two-sided ``level``
    t interval and test p-value (Welch-Satterthwaite degrees of freedom, by the formula:
    scipy's ``ttest_ind`` warns where a sample is constant): ``(diff, low, high, p)``, the
    last three nan where either sample has fewer than two values or neither has spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    va, vb = (float(x.var(ddof=1)) / len(x) for x in (a, b))  # s^2 / n
    if not va + vb > 0:
        return diff, math.nan, math.nan, math.nan
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(1 - (1 - level) / 2, df)) * se
    return diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, df))


def claim_verdict(expect: str, mean: float, p: float, low: float = math.nan,
                  high: float = math.nan, paper: float | None = None,
                  smallest: float = math.nan) -> str:
    """What the pairs say of a claim that ``a`` is ``expect`` against ``b`` (``equal``: on
    par; ``not lower``: on par or better), from ``p`` (Holm's, for the claims table), the
    interval ``low``..``high`` of the difference (the family-wise one, for the claims
    table) and the paper's reported difference ``paper`` (points) where the claim gives
    one: "agrees" / "disagrees" only where ``p < ALPHA``; "excludes the paper's effect"
    where the interval lies wholly on the near side of the paper's difference; otherwise
    "cannot tell", with the smallest difference the pairs would detect (``smallest``)."""
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


@dataclasses.dataclass(frozen=True)
class LayerAgreement:
    """How alike the kept layers of runs of one task are: the mean Jaccard similarity of
    pairs of runs of the same task (``within``) and of different tasks (``between``); the
    one-sided p of their gap when the tasks are shuffled over the runs (``shuffled_p``);
    and against the position null, in which each run keeps as many layers as it did at
    uniformly random positions: that null's mean gap (``null_gap``: what the runs' layer
    counts alone give, e.g. when one task keeps more layers) and the share of null gaps at
    least the observed one (``p``)."""

    within: float
    between: float
    shuffled_p: float
    null_gap: float
    p: float


def _jaccard(kept: np.ndarray) -> np.ndarray:
    """[..., runs, depth] booleans -> [..., runs, runs] Jaccard similarities (1 where both
    keep nothing)."""
    k = kept.astype(np.float64)
    inter = np.einsum("...rd,...sd->...rs", k, k)
    count = k.sum(-1)
    union = count[..., :, None] + count[..., None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def layer_agreement(runs: list[tuple[str, list[int]]], depth: int,
                    permutations: int = 10000) -> LayerAgreement | None:
    """:class:`LayerAgreement` of ``(task, kept layers)`` runs of a model with ``depth``
    layers (fixed seeds, so the page is the same each time); None without pairs of runs of
    both kinds."""
    tasks = np.array([t for t, _ in runs])
    n = len(runs)
    kept = np.zeros((n, depth), bool)
    for i, (_, layers) in enumerate(runs):
        kept[i, list(layers)] = True
    upper = np.triu(np.ones((n, n), bool), 1)
    same = (tasks[:, None] == tasks[None, :]) & upper
    if n < 3 or not same.any() or same.sum() == upper.sum():
        return None
    other = upper & ~same

    def gaps(jac, same=same, other=other):  # [..., n, n] -> [...] within - between
        return jac[..., same].mean(-1) - jac[..., other].mean(-1)

    jac = _jaccard(kept)
    observed = float(gaps(jac))
    rng = np.random.default_rng(0)
    shuffled = []
    for _ in range(permutations):
        labels = rng.permutation(tasks)
        s = (labels[:, None] == labels[None, :]) & upper
        shuffled.append(jac[s].mean() - jac[upper & ~s].mean())
    shuffled_p = (np.sum(np.array(shuffled) >= observed - 1e-12) + 1) / (permutations + 1)
    counts = kept.sum(1)
    rng = np.random.default_rng(1)
    null = []
    for start in range(0, permutations, 1000):
        m = min(1000, permutations - start)
        ranks = rng.random((m, n, depth)).argsort(-1).argsort(-1)
        null.append(gaps(_jaccard(ranks < counts[None, :, None])))
    null = np.concatenate(null)
    p = (np.sum(null >= observed - 1e-12) + 1) / (permutations + 1)
    return LayerAgreement(float(jac[same].mean()), float(jac[other].mean()),
                          float(shuffled_p), float(null.mean()), float(p))


def cochran_q(kept: np.ndarray) -> float:
    """Cochran's Q test of whether the layers are kept equally often, on a [runs, depth]
    0/1 matrix (statsmodels): the p-value, nan where it is undefined (every run keeps all
    layers or none)."""
    from statsmodels.stats.contingency_tables import cochrans_q

    kept = np.asarray(kept, int)
    rows = kept.sum(1)
    if kept.shape[0] < 2 or np.all((rows == 0) | (rows == kept.shape[1])):
        return math.nan
    return float(cochrans_q(kept).pvalue)


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

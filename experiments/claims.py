"""The paper's claims, each checked against a sweep's results: a paired comparison with
the direction the paper reports, the layers an AA label keeps (against the paper's share,
or against another sweep's label), or the adapter weights a label stores against
another's (a sweep's ``claims``; see :mod:`experiments.aggregate`)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable

import numpy as np
from scipy import stats

from aa_jax.errors import UserError
from experiments.grid import Sweep, named_sweep, run_name
from experiments.significance import (ALPHA, TaskAverage, claim_verdict, cochran_q,
                                      detectable, fmt_p, holm, interval, layer_agreement,
                                      task_average, tests, welch)
from experiments.tables import group_title, pair_groups

EXPECTS = ("higher", "lower", "equal", "not lower")


def by_size(items) -> list[tuple]:
    """``(size, value)`` items grouped by size, smallest first (the full set last)."""
    groups: dict = {}
    for size, value in items:
        groups.setdefault(size, []).append(value)
    return sorted(groups.items(), key=lambda kv: 10**9 if kv[0] is None else kv[0])


@dataclasses.dataclass
class Row:
    """One row of the claims table. ``p``: the row's test, counted in the table's family
    when ``family`` (nan: no test); ``average``: a paired claim's difference of task
    averages (its family-wise interval is drawn once the family's size is known);
    ``verdict``: text, or a function of the row's Holm p and the family's size."""

    size: str
    over: str
    result: str
    interval: str = "–"
    p: float = math.nan
    wilcoxon: float = math.nan
    detectable: float = math.nan
    verdict: str | Callable[[float, int], str] = "–"
    family: bool = False
    average: TaskAverage | None = None


def kept_layers(sweep: Sweep, done: dict, label: str) -> list[tuple]:
    """``(size, (task, kept layers, depth))`` of the finished ``label`` runs."""
    out = []
    for p in sweep.points:
        if p.label == label and run_name(p) in done:
            arch = json.loads((sweep.result_dir(p) / "architecture.json").read_text())
            out.append((p.settings.get("train_size"),
                        (p.settings["task"], arch["selected_layers"], arch["depth"])))
    return out


def layers_kept_rows(sweep: Sweep, done: dict, label: str, paper: list[float]) -> list[Row]:
    """Per size and task, the layers the ``label`` runs kept: how many, against the
    paper's share (the family-wise t interval of the runs' mean share) and against random
    switches' half (a one-sample t-test over the runs' shares), and how often each layer
    (Cochran's Q of a layer preference);
    then per size, whether runs of one task keep more alike layers than as many layers at
    random positions (see :func:`~experiments.significance.layer_agreement`)."""
    rows = []
    for size, runs in by_size(kept_layers(sweep, done, label)):
        depth = runs[0][2]
        per_task: dict[str, list[list[int]]] = {}
        for task, layers, _ in runs:
            per_task.setdefault(task, []).append(layers)
        for task, sets in per_task.items():
            kept = np.zeros((len(sets), depth), int)
            for i, layers in enumerate(sets):
                kept[i, layers] = 1
            counts = kept.sum(1)
            shares = counts / depth
            share = float(shares.mean())
            # The runs are the independent units (a run's layers are not): a one-sample
            # t-test of the runs' shares against random switches' 1/2.
            spread = len(shares) > 1 and np.any(shares != shares[0])
            chance = stats.ttest_1samp(shares, 0.5).pvalue if spread else math.nan

            def share_verdict(p_holm, m, shares=shares, spread=spread):
                if not spread:
                    return "cannot tell (too few runs or no spread)"
                mean, se = shares.mean(), shares.std(ddof=1) / math.sqrt(len(shares))
                half = stats.t.ppf(1 - ALPHA / (2 * max(m, 1)), len(shares) - 1) * se
                low, high = mean - half, mean + half
                paper_says = ("fewer layers kept than the paper's share" if high < paper[0]
                              else "more layers kept than the paper's share" if low > paper[1]
                              else "cannot tell against the paper's share")
                return paper_says + "; " + (
                    f"{'fewer' if mean < 0.5 else 'more'} than random switches keep (50%)"
                    if p_holm < ALPHA else "cannot tell from random switches' 50%")

            rows.append(Row(str(size or "full"), f"{label} on {task}: {len(sets)} runs",
                            f"{counts.mean():.1f} of {depth} layers ({100 * share:.0f}%; "
                            f"{counts.min()} to {counts.max()} per run)", p=chance,
                            verdict=share_verdict, family=True))
            rates = " ".join(f"{j}:{100 * r:.0f}" for j, r in enumerate(kept.mean(0)))
            rows.append(Row("", f"{label} on {task}: % of runs keeping layer 0, 1, ...",
                            rates, p=cochran_q(kept), family=True,
                            verdict=lambda p_holm, m: (
                                "cannot tell (too few runs or no variation)"
                                if math.isnan(p_holm) else
                                "some layers are kept more often than others"
                                if p_holm < ALPHA else "no layer preference detected")))
        agreement = layer_agreement([(t, layers) for t, layers, _ in runs], depth)
        if agreement is not None:
            a = agreement
            rows.append(Row(
                "", f"{label}: {len(runs)} runs of {len(per_task)} tasks, alike within a task?",
                f"Jaccard {a.within:.3f} within against {a.between:.3f} between tasks "
                f"(gap {a.within - a.between:.3f}; as many layers at random positions give "
                f"{a.null_gap:.3f}; tasks shuffled: p {fmt_p(a.shuffled_p)})", p=a.p,
                family=True, verdict=lambda p_holm, m: (
                    "more alike within a task than the runs' layer counts alone make them"
                    if p_holm < ALPHA else
                    "cannot tell from the runs' layer counts placed at random")))
    return rows


def shares_by_task(sweep: Sweep, done: dict, label: str) -> dict[tuple, np.ndarray]:
    """``{(size, task): the share of its layers each finished ``label`` run kept}``."""
    out: dict[tuple, list[float]] = {}
    for size, (task, layers, depth) in kept_layers(sweep, done, label):
        out.setdefault((size, task), []).append(len(layers) / depth)
    return {key: np.array(v) for key, v in out.items()}


def layers_against_rows(sweep: Sweep, done: dict, label: str, against: dict) -> list[Row]:
    """Per size and task that both sweeps ran, the share of its layers the ``label`` runs
    kept against the share the other sweep's label kept (``against``: ``{"sweep",
    "label"}``; e.g. AA's layers out of MPNet's 12 against its layers out of MiniLM's 6):
    the difference of the runs' mean shares with Welch's t interval and test (the runs of
    the two sweeps are independent; in the table's family)."""
    from experiments.records import read_results

    other = named_sweep(sweep, against.get("sweep"), "claim")
    other_label = against.get("label")
    if other_label not in {p.label for p in other.points}:
        raise UserError(f"Sweep {sweep.name}: the claim compares with label {other_label!r}, "
                        f"which sweep {other.name} does not have.")
    theirs = shares_by_task(other, read_results(other)[0], other_label)
    rows = []
    mine = shares_by_task(sweep, done, label)
    for size, tasks in by_size(mine):  # smallest size first, as the other claims
        for task in tasks:
            a, b = mine[size, task], theirs.get((size, task))
            if b is None:
                continue
            *points, p = welch(a, b)
            diff, low, high = (100 * x for x in points)
            spread = not math.isnan(p)

            def verdict(p_holm, m, diff=diff, spread=spread):
                if not spread:
                    return "cannot tell (too few runs or no spread)"
                if p_holm < ALPHA:
                    return (f"{'more' if diff > 0 else 'fewer'} of its layers kept than in "
                            f"{other.name}")
                return f"cannot tell from {other.name}'s share"

            rows.append(Row(str(size or "full"),
                            f"{label} on {task}: {len(a)} runs against {other.name}'s "
                            f"{other_label}: {len(b)}",
                            f"{100 * a.mean():.0f}% against {100 * b.mean():.0f}% of the layers "
                            f"({diff:+.1f} points)",
                            "–" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]", p,
                            verdict=verdict, family=True))
    return rows


def weights_rows(sweep: Sweep, done: dict, label: str, other: str) -> list[Row]:
    """Per size, the adapter weights the ``label`` runs store against the ``other`` runs."""
    rows = []
    finished = [p for p in sweep.points if p.label in (label, other) and run_name(p) in done]
    for size, runs in by_size((p.settings.get("train_size"),
                               (p.label, done[run_name(p)]["adapter_weights"]))
                              for p in finished):
        mine = [w for lab, w in runs if lab == label]
        theirs = [w for lab, w in runs if lab == other]
        if mine and theirs:
            a, b = statistics.mean(mine), statistics.mean(theirs)
            rows.append(Row(str(size or "full"), f"{label} against {other}: {len(mine)} runs",
                            f"{round(a):,} against {round(b):,} adapter weights",
                            verdict="agrees" if a < b else "disagrees"))
    return rows


def paired_claim_rows(sweep: Sweep, done: dict, a: str, b: str, expect: str,
                      learns: dict, paper: dict | None = None) -> list[Row]:
    """Per size, ``a − b`` as the paper measures it: the difference of task averages
    (:class:`~experiments.significance.TaskAverage`), its 95% interval, its t-test (in the
    table's family) and the smallest difference it detects, its verdict a function of the
    Holm p and the family-wise interval (see :func:`claims_table`); then one row per task
    (its mean difference over seeds, 95% interval, paired t and Wilcoxon tests; marked †
    where the task does not learn, see :func:`~experiments.tables.baseline_learns`), shown
    beside it and not counted in the family. ``paper`` maps a train size to the difference
    the paper reports there."""
    rows = []
    for rest, pairs in pair_groups(sweep, done, [a, b]).items():
        size = dict(rest).get("train_size")
        learning = learns.get(size, set())
        per_task: dict[str, list] = {}
        for pair in pairs:
            per_task.setdefault(pair[2], []).append(pair)
        diffs = {t: tests(ps)[0] for t, ps in per_task.items()}
        avg = task_average(diffs)
        gain = (paper or {}).get(str(size))
        left = f"; {', '.join(avg.left_out)} left out (one pair)" if avg.left_out else ""

        def verdict(p_holm, m, avg=avg, gain=gain):
            if avg.se == 0:
                return "cannot tell (no spread)"
            low, high = avg.interval(1 - ALPHA / max(m, 1))
            return claim_verdict(expect, avg.mean, p_holm, low, high, gain, avg.detectable())

        low, high = avg.interval()
        rows.append(Row(group_title(rest),
                        f"{a} − {b}: average of {avg.tasks} task(s), {avg.pairs} pairs{left}",
                        "–" if math.isnan(avg.mean) else f"{avg.mean:+.2f}",
                        "–" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]", avg.p,
                        detectable=avg.detectable(), verdict=verdict, family=True,
                        average=avg))
        for task, ps in per_task.items():
            d, t_p, w_p = tests(ps)
            low, high = interval(d)
            rows.append(Row("", f"{task}: {len(d)} pairs" + ("" if task in learning else " †"),
                            f"{d.mean():+.2f}",
                            "–" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]", t_p,
                            w_p, detectable(d), verdict="(per task)"))
    return rows


def claim_rows(sweep: Sweep, done: dict, claim: dict, learns: dict) -> list[Row]:
    """The rows of one of the sweep's ``claims``: the layers an AA label keeps, the adapter
    weights a label stores against another's, or a paired comparison."""
    if "against" in claim:
        return layers_against_rows(sweep, done, claim["layers_kept"], claim["against"])
    if "layers_kept" in claim:
        return layers_kept_rows(sweep, done, claim["layers_kept"], claim["paper_fraction"])
    if "weights" in claim:
        return weights_rows(sweep, done, claim["weights"], claim["b"])
    return paired_claim_rows(sweep, done, claim["a"], claim["b"], claim["expect"], learns,
                             claim.get("paper_difference"))


def check_claims(sweep: Sweep) -> list[dict]:
    """The sweep's ``claims``, each checked to name labels the sweep has."""
    labels = {p.label for p in sweep.points}
    claims = sweep.spec.get("claims", [])
    for claim in claims:
        if not isinstance(claim, dict):
            raise UserError(f"Sweep {sweep.name}: the claim {claim!r} is not an object; see "
                            f"experiments/aggregate.py.")
        kind = ("layers_against" if "against" in claim else
                "layers_kept" if "layers_kept" in claim else
                "weights" if "weights" in claim else "paired")
        need = {"layers_against": ("claim", "layers_kept", "against"),
                "layers_kept": ("claim", "layers_kept", "paper_fraction"),
                "weights": ("claim", "weights", "b"),
                "paired": ("claim", "a", "b", "expect")}[kind]
        missing = [k for k in need if k not in claim]
        named = [claim[k] for k in ("a", "b", "layers_kept", "weights") if k in claim]
        if missing:
            raise UserError(f"Sweep {sweep.name}: the claim {claim} lacks "
                            f"{', '.join(missing)}; see experiments/aggregate.py.")
        if any(x not in labels for x in named):
            raise UserError(f"Sweep {sweep.name}: the claim {claim.get('claim')!r} names a "
                            f"method label the grid does not have; use one of "
                            f"{', '.join(sorted(labels))}.")
        if kind == "layers_against" and not isinstance(claim["against"], dict):
            raise UserError(f"Sweep {sweep.name}: the claim {claim['claim']!r} compares with "
                            f"{claim['against']!r}; give {{\"sweep\": <sweep name>, "
                            f"\"label\": <its label>}}.")
        if kind == "paired" and claim["expect"] not in EXPECTS:
            raise UserError(f"Sweep {sweep.name}: the claim {claim['claim']!r} expects "
                            f"{claim['expect']!r}; use one of {', '.join(EXPECTS)}.")
    return claims


def claims_table(sweep: Sweep, done: dict, learns: dict) -> tuple[list[str], int]:
    """The claims' rows as Markdown lines, and the size m of the family: every test of a
    row that states a verdict, over the whole table. Each such verdict is decided on its
    Holm-adjusted p, and a paired claim's "excludes" on its Bonferroni interval at level
    1 − 0.05 / m (the family-wise interval)."""
    head = ["the paper's claim", "n", "measured over", "result", "95% interval",
            "family-wise interval", "p", "Holm p", "Wilcoxon p", "detectable", "verdict"]
    rows = [(claim["claim"] if i == 0 else "", row)
            for claim in check_claims(sweep)
            for i, row in enumerate(claim_rows(sweep, done, claim, learns)
                                    or [Row("–", "–", "–")])]
    tested = [i for i, (_, row) in enumerate(rows) if row.family and not math.isnan(row.p)]
    adjusted = [math.nan] * len(rows)
    for i, p in zip(tested, holm([rows[i][1].p for i in tested])):
        adjusted[i] = p
    m = len(tested)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (title, row), p_holm in zip(rows, adjusted):
        verdict = row.verdict(p_holm, m) if callable(row.verdict) else row.verdict
        wide = row.average.interval(1 - ALPHA / m) if row.average and m else (math.nan,) * 2
        cells = [title, row.size, row.over, row.result, row.interval,
                 "–" if math.isnan(wide[0]) else f"[{wide[0]:+.2f}, {wide[1]:+.2f}]",
                 fmt_p(row.p), fmt_p(p_holm), fmt_p(row.wilcoxon),
                 "–" if math.isnan(row.detectable) else f"{row.detectable:.1f}", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, m

"""The paper's claims, each checked against a sweep's results: a paired comparison with
the direction the paper reports, the layers an AA label keeps, or the adapter weights a
label stores against another's (a sweep's ``claims``; see :mod:`experiments.aggregate`)."""

from __future__ import annotations

import json
import math
import statistics

from scipy import stats

from aa_jax.errors import UserError
from experiments.grid import Sweep, run_name
from experiments.significance import (ALPHA, claim_verdict, detectable, fmt_p, holm,
                                      interval, layer_agreement, tests)
from experiments.tables import group_title, pair_groups

EXPECTS = ("higher", "lower", "equal", "not lower")


def by_size(items) -> list[tuple]:
    """``(size, value)`` items grouped by size, smallest first (the full set last)."""
    groups: dict = {}
    for size, value in items:
        groups.setdefault(size, []).append(value)
    return sorted(groups.items(), key=lambda kv: 10**9 if kv[0] is None else kv[0])


def layers_kept_rows(sweep: Sweep, done: dict, label: str, paper: list[float]) -> list:
    """Per size, how many layers the ``label`` runs kept, against the paper's fraction."""
    rows = []
    finished = [p for p in sweep.points if p.label == label and run_name(p) in done]
    for size, runs in by_size(
            (p.settings.get("train_size"), (p.settings["task"], json.loads(
                (sweep.result_dir(p) / "architecture.json").read_text())))
            for p in finished):
        kept = [len(arch["selected_layers"]) for _, arch in runs]
        fraction = statistics.mean(len(arch["selected_layers"]) / arch["depth"]
                                   for _, arch in runs)
        per_task: dict[str, list[int]] = {}
        for (task, _), k in zip(runs, kept):
            per_task.setdefault(task, []).append(k)
        verdict = ("fewer layers kept" if fraction < paper[0] else
                   "more layers kept" if fraction > paper[1] else "agrees")
        # Random switches keep each layer with probability 1/2: is the share kept
        # different from that? (The layers of a run are taken as independent.)
        total = sum(arch["depth"] for _, arch in runs)
        chance = stats.binomtest(sum(kept), total, 0.5).pvalue
        verdict += (f"; {'fewer' if fraction < 0.5 else 'more'} than random switches "
                    f"keep (50%, binomial p {fmt_p(chance)})" if chance < ALPHA else
                    f"; as many as random switches keep (50%, binomial p {fmt_p(chance)})")
        verdict += layer_agreement([(task, arch["selected_layers"]) for task, arch in runs])
        rows.append([str(size or "full"), f"{label}: {len(runs)} runs",
                     f"{statistics.mean(kept):.1f} of {runs[0][1]['depth']} layers "
                     f"({100 * fraction:.0f}%; {min(kept)} to {max(kept)} per run)", "–",
                     math.nan, math.nan, "–",
                     "; ".join(f"{t} {statistics.mean(v):.1f} ({len(v)})"
                               for t, v in per_task.items()), verdict])
    return rows


def weights_rows(sweep: Sweep, done: dict, label: str, other: str) -> list:
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
            rows.append([str(size or "full"), f"{label} against {other}: {len(mine)} runs",
                         f"{round(a):,} against {round(b):,} adapter weights", "–",
                         math.nan, math.nan, "–", "–",
                         "agrees" if a < b else "disagrees"])
    return rows


def paired_claim_rows(sweep: Sweep, done: dict, a: str, b: str, expect: str,
                      learns: dict, paper: dict | None = None) -> list:
    """Per size, ``a − b`` over all tasks: the mean, its 95% interval, the tests, the
    smallest difference the pairs detect, the per-task means (marked † where the task
    does not learn: see :func:`baseline_learns`), and the verdict as a function of the
    Holm-adjusted p (see :func:`claims_table`), to which the tasks that learn are added
    where they are fewer than all. ``paper`` maps a train size to the difference the
    paper reports there."""
    rows = []
    for rest, pairs in pair_groups(sweep, done, [a, b]).items():
        size = dict(rest).get("train_size")
        learning = learns.get(size, set())
        d, t_p, w_p = tests(pairs)
        low, high = interval(d)
        smallest = detectable(d)
        gain = (paper or {}).get(str(size))
        per_task: dict[str, list[float]] = {}
        for (_, _, task), diff in zip(pairs, d):
            per_task.setdefault(task, []).append(diff)
        extra = ""
        chosen = [x for x in pairs if x[2] in learning]
        if 1 < len(chosen) < len(pairs):
            dl, tl, _ = tests(chosen)
            ll, hl = interval(dl)
            extra = (f"; tasks that learn: {dl.mean():+.2f} over {len(dl)}, "
                     f"[{ll:+.2f}, {hl:+.2f}], p {fmt_p(tl)}")

        def verdict(p_holm, mean=d.mean(), low=low, high=high, gain=gain,
                    smallest=smallest, extra=extra):
            return claim_verdict(expect, mean, p_holm, low, high, gain, smallest) + extra

        tasks = "; ".join(f"{t} {statistics.mean(v):+.2f} ({len(v)})"
                          + ("" if t in learning else " †") for t, v in per_task.items())
        rows.append([group_title(rest), f"{a} − {b}: {len(d)} pairs", f"{d.mean():+.2f}",
                     "–" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]",
                     t_p, w_p, "–" if math.isnan(smallest) else f"{smallest:.1f}",
                     tasks, verdict])
    return rows


def claim_rows(sweep: Sweep, done: dict, claim: dict, learns: dict) -> list[list]:
    """The rows of one of the sweep's ``claims``, one per size: the layers an AA label
    keeps, the adapter weights a label stores against another's, or a paired comparison.
    A row is (size, measured over, result, interval, t-test p, Wilcoxon p (nan: none),
    detectable, per task, verdict); a paired row's verdict is a function of Holm's p."""
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
        kind = ("layers_kept" if "layers_kept" in claim else "weights" if "weights" in claim
                else "paired")
        need = {"layers_kept": ("claim", "layers_kept", "paper_fraction"),
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
        if kind == "paired" and claim["expect"] not in EXPECTS:
            raise UserError(f"Sweep {sweep.name}: the claim {claim['claim']!r} expects "
                            f"{claim['expect']!r}; use one of {', '.join(EXPECTS)}.")
    return claims


def claims_table(sweep: Sweep, done: dict, learns: dict) -> tuple[list[str], int]:
    """The claims' rows as Markdown lines, and how many t-tests Holm's adjustment counts.
    Each paired row's verdict is decided on its Holm-adjusted p."""
    head = ["the paper's claim", "n", "measured over", "result", "95% interval", "t-test p",
            "Holm p", "Wilcoxon p", "detectable", "per task", "verdict"]
    rows = [(claim["claim"] if i == 0 else "", row)
            for claim in check_claims(sweep)
            for i, row in enumerate(claim_rows(sweep, done, claim, learns)
                                    or [["–"] * 4 + [math.nan] * 2 + ["–"] * 3])]
    adjusted = holm([row[4] for _, row in rows])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (title, row), p_holm in zip(rows, adjusted):
        verdict = row[8](p_holm) if callable(row[8]) else row[8]
        cells = [title, *row[:4], fmt_p(row[4]), fmt_p(p_holm), fmt_p(row[5]), *row[6:8],
                 verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, sum(not math.isnan(p) for p in adjusted)

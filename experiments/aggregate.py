"""Result tables in the paper's layout, paired tests and figures, from the committed results.

    uv run python experiments/aggregate.py            # every sweep with results
    uv run python experiments/aggregate.py paper      # one sweep
    uv run python experiments/aggregate.py --check    # exit 1 if a committed table differs

For each sweep (``experiments/sweeps/<name>.json``) with a results folder, writes
``experiments/results/<name>/TABLE.md`` and ``figures/*.png`` there. Nothing but the
result files is read, so the tables are reproduced byte for byte from a clone.

Tables: one row per method label (and per other grid value, such as the train size or the
learning rate), one column per task, each cell the task's main metric (CoLA MCC, STS-B
Spearman, MRPC F1, else accuracy) in percent, mean ± standard deviation over seeds. A cell
is marked † when its seeds do not score clearly above the majority class of the test
set (their mean minus two standard errors is not above it; one seed: not above it).
"avg" averages every task like the paper; "avg (learns)" only the tasks where the
baseline of that size has at least two seeds and is not marked, so that chance-level
tasks are not averaged as if they were signal (one seed cannot show that a score is
clearly above the majority class, only that it is not).

Paired comparisons: for each pair of labels a sweep lists under ``comparisons`` (else
every label against ``baseline``), the test-score differences over the (task, seed) pairs
both have, per size: their mean and standard deviation in points, a paired t-test and a
Wilcoxon signed-rank test.

The paper's claims: each of a sweep's ``claims`` names a paired comparison and the direction
the paper reports (``higher``, ``lower``, ``equal``, or ``not lower``), or the label whose
kept layers or stored adapter weights it is about; per size, the measured difference, its
tests and a verdict.

The README's Results section quotes a sweep's status line, Table 2 and the claims between
two markers (:func:`readme_start`, :data:`README_END`) for each sweep it names there
(``paper_v2``, ``paper``); aggregating such a sweep refreshes its excerpt, and ``--check``
verifies it too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import optimize, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import RESULTS, SWEEPS, Sweep, UserError, run_name  # noqa: E402

from aa_jax.checkpoint import write_text_atomic  # noqa: E402
from aa_jax.data.glue import get_task  # noqa: E402

ALPHA = 0.05


# -- reading ----------------------------------------------------------------------------

def read_results(sweep: Sweep) -> tuple[dict, dict]:
    """The finished results and the failure records of a sweep's points, by run name.

    The runner writes every file whole, so a result.json (or failed.json) that does not
    read is damaged: it is named, never counted as an unfinished run."""
    done, failed = {}, {}
    for p in sweep.points:
        d = sweep.result_dir(p)
        if (d / "result.json").exists():
            done[run_name(p)] = read_record(d / "result.json", "test")
        elif (d / "failed.json").exists():
            failed[run_name(p)] = read_record(d / "failed.json", "error")
    return done, failed


def read_record(path: Path, key: str) -> dict:
    """A result.json or failed.json: a JSON object with ``key``, or one sentence naming it."""
    try:
        record = json.loads(path.read_text())
        problem = None if isinstance(record, dict) and key in record else f"no {key!r} entry"
    except (OSError, ValueError, RecursionError) as e:
        problem = str(e).split(":")[0] if isinstance(e, ValueError) else (e.strerror or str(e))
    if problem is not None:
        raise UserError(f"{path} is damaged ({problem}); restore it with git checkout -- "
                        f"{path}, or delete {path.parent} so that the sweep runs it again.")
    return record


def majority_scores() -> dict[str, dict]:
    """The majority-class test score of each task, from any result that records it (every
    run of a task has the same test set)."""
    out: dict[str, dict] = {}
    for f in sorted(RESULTS.glob("*/*/result.json")):
        if f.parent.name.startswith("."):  # a run being published
            continue
        r = read_record(f, "test")
        if "majority" in r:
            out.setdefault(r["task"], r["majority"])
    return out


def score(r: dict, split: str = "test") -> float:
    return r[split][r["select_metric"]]


# -- cells ------------------------------------------------------------------------------

def row_key(sweep: Sweep, p) -> tuple:
    """What a table row stands for: the label and the grid values other than task and
    seed."""
    rest = tuple((k, v) for k, v in p.cell.items() if k not in ("task", "seed", "train_size"))
    return (p.label, (("train_size", p.settings.get("train_size")),) + rest)


def row_title(key: tuple) -> str:
    label, rest = key
    parts = [label]
    for k, v in rest:
        if k == "train_size":
            continue
        name = {"learning_rate": "lr", "rational_learning_rate": "rational lr"}.get(k, k)
        parts.append(f"{name} {v:g}" if isinstance(v, float) else f"{name} {v}")
    return ", ".join(parts)


def size_of(key: tuple):
    return dict(key[1]).get("train_size")


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


def fmt_cell(values: list[float], expected: int, marked: bool) -> str:
    if not values:
        return "–"
    text = (f"{100 * values[0]:.2f}" if len(values) == 1 else
            f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}")
    if len(values) < expected:
        text += f" ({len(values)}/{expected})"
    return text + (" †" if marked else "")


def table(sweep: Sweep, done: dict, split: str, majority: dict,
          labels: list[str] | None = None,
          sizes: list | None = None) -> tuple[str, dict]:
    """A Markdown table of ``labels`` (default all) at ``sizes`` (default all), and per
    size the tasks where the baseline is not at chance."""
    tasks = list(dict.fromkeys(p.settings.get("task") for p in sweep.points))
    rows: dict[tuple, dict[str, list]] = {}
    chosen = [p for p in sweep.points if (not labels or p.label in labels)
              and (sizes is None or p.settings.get("train_size") in sizes)]
    for p in sorted(chosen, key=lambda p: (size_order(p),
                                           labels.index(p.label) if labels else 0)):
        rows.setdefault(row_key(sweep, p), {t: [] for t in tasks})[p.settings["task"]].append(p)
    metric = {t: select_metric(t, done) for t in tasks}
    marks = {}
    for key, cells in rows.items():
        for t, points in cells.items():
            values = [score(done[run_name(p)], split) for p in points if run_name(p) in done]
            marks[(key, t)] = split == "test" and at_chance(
                values, (majority.get(t) or {}).get(metric[t]))
    learns = baseline_learns(sweep, done, majority, metric)
    head = ["method", "n"] + [f"{t} ({metric[t]})" for t in tasks] + ["avg"]
    if split == "test":
        head += ["avg (learns)"]
    head += ["layers", "adapter weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, cells in rows.items():
        size = size_of(key)
        row = [row_title(key), str(size or "full")]
        means, layers, weights = {}, [], []
        for t in tasks:
            runs = [done[run_name(p)] for p in cells[t] if run_name(p) in done]
            values = [score(r, split) for r in runs]
            row.append(fmt_cell(values, len(cells[t]), marks[(key, t)]))
            if values:
                means[t] = statistics.mean(values)
            layers += [len(r["selected_layers"]) for r in runs]
            weights += [r["adapter_weights"] for r in runs]
        row.append(f"{100 * statistics.mean(means.values()):.2f}" if len(means) == len(tasks)
                   else "–")
        if split == "test":
            use = [t for t in tasks if t in learns.get(size, set())]
            row.append(f"{100 * statistics.mean(means[t] for t in use):.2f}"
                       if use and all(t in means for t in use) else "–")
        row.append(f"{statistics.mean(layers):.1f}" if layers else "–")
        row.append(f"{round(statistics.mean(weights)):,}" if weights else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), learns


def select_metric(task: str, done: dict) -> str:
    """The metric a task's runs select and report (from its results, else its definition)."""
    found = next((r["select_metric"] for r in done.values() if r["task"] == task), None)
    if found:
        return found
    try:
        return get_task(task).select_metric
    except Exception:  # noqa: BLE001 - a user task that has no run yet
        return "?"


def size_order(p) -> int:
    size = p.settings.get("train_size")
    return 10**9 if size is None else size


def baseline_verdicts(sweep: Sweep, done: dict, majority: dict, metric: dict) -> dict:
    """Per (size, task) whose baseline has at least two seeds and whose majority-class
    score is known: whether the baseline scores clearly above the majority class."""
    values: dict[tuple, list[float]] = {}
    for p in sweep.points:
        if p.label == sweep.role("reference") and run_name(p) in done:
            values.setdefault((p.settings.get("train_size"), p.settings["task"]), []).append(
                score(done[run_name(p)]))
    verdicts = {}
    for (size, task), vs in values.items():
        chance = (majority.get(task) or {}).get(metric[task])
        if chance is not None and len(vs) >= 2:
            verdicts[(size, task)] = not at_chance(vs, chance)
    return verdicts


def baseline_learns(sweep: Sweep, done: dict, majority: dict, metric: dict) -> dict:
    """Per size, the tasks whose baseline scores clearly above the majority class over at
    least two seeds (none where the majority-class score is not known yet)."""
    learns: dict = {}
    for (size, task), above in baseline_verdicts(sweep, done, majority, metric).items():
        if above:
            learns.setdefault(size, set()).add(task)
    return learns


# -- paired tests -----------------------------------------------------------------------

def comparisons(sweep: Sweep) -> list:
    """The sweep's ``comparisons``: ``[a, b]`` pairs of method labels, or
    ``{"key": k, "a": x, "b": y}`` for two values of a grid key (such as the dtype) under
    one label. Default: every label against ``baseline``."""
    listed = sweep.spec.get("comparisons")
    if listed:
        return listed
    labels = list(dict.fromkeys(p.label for p in sweep.points))
    ref = sweep.role("reference")
    return [[lab, ref] for lab in labels if lab != ref and ref in labels]


def pair_groups(sweep: Sweep, done: dict, comparison) -> dict[tuple, list]:
    """The finished (score a, score b, task) pairs of a comparison, grouped by the grid
    values other than task and seed (the train size first)."""
    if isinstance(comparison, dict):
        key, a, b = comparison["key"], comparison["a"], comparison["b"]

        def side(p):  # (the slot it pairs in, which side it is)
            rest = {k: v for k, v in p.cell.items() if k != key}
            return (p.label, json.dumps(rest, sort_keys=True)), p.cell.get(key)
    else:
        a, b = comparison

        def side(p):
            return json.dumps(p.cell, sort_keys=True), p.label
    slots: dict = {}
    for p in sweep.points:
        slot, which = side(p)
        slots.setdefault(slot, {})[which] = p
    groups: dict[tuple, list[tuple[float, float, str]]] = {}
    for sides in slots.values():
        if a in sides and b in sides:
            ra, rb = done.get(run_name(sides[a])), done.get(run_name(sides[b]))
            if ra and rb:
                pa = sides[a]
                rest = (("train_size", pa.settings.get("train_size")),) + tuple(
                    (k, v) for k, v in pa.cell.items()
                    if k not in ("task", "seed", "train_size")
                    and not (isinstance(comparison, dict) and k == comparison["key"]))
                groups.setdefault(rest, []).append((score(ra), score(rb),
                                                    pa.settings.get("task")))
    return groups


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


def group_title(rest: tuple) -> str:
    size = dict(rest).get("train_size")
    title = row_title(("", rest)).lstrip(", ")
    return str(size or "full") + (f", {title}" if title else "")


def paired(sweep: Sweep, done: dict, comparison, learns: dict) -> list[list[str]]:
    """One row per size (and other grid value): the (task, seed) pairs both sides have."""
    if isinstance(comparison, dict):
        title_a, b = f"{comparison['key']} {comparison['a']}", comparison["b"]
    else:
        title_a, b = comparison
    out = []
    for rest, pairs in pair_groups(sweep, done, comparison).items():
        size = dict(rest).get("train_size")
        for scope, chosen in (("all tasks", pairs),
                              ("tasks that learn", [x for x in pairs
                                                    if x[2] in learns.get(size, set())])):
            if scope != "all tasks" and len(chosen) in (0, len(pairs)):
                continue
            d, t_p, w_p = tests(chosen)
            n = len(d)
            verdict = ("–" if math.isnan(t_p) else
                       f"{title_a} {'higher' if d.mean() > 0 else 'lower'}" if t_p < ALPHA
                       else "within noise")
            out.append([f"{title_a} − {b}", group_title(rest), scope, str(n),
                        f"{d.mean():+.2f}", f"{d.std(ddof=1):.2f}" if n > 1 else "–",
                        fmt_p(t_p), fmt_p(w_p), verdict])
    return out


# -- the paper's claims -----------------------------------------------------------------

EXPECTS = ("higher", "lower", "equal", "not lower")


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


def fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


# -- the page ---------------------------------------------------------------------------

def where_run(done: dict) -> str:
    """Which devices the finished runs trained on, and how many trained as seeds together
    (results written before the device was recorded ran on a CPU, one seed at a time)."""
    if not done:
        return ""
    devices: dict[str, list[dict]] = {}
    for r in done.values():
        backend, _, kind = r.get("device", "cpu").partition(": ")
        name = backend if kind in ("", backend) else f"{backend} ({kind})"
        devices.setdefault(name, []).append(r)
    together = sum(len(r.get("seeds_together") or []) > 1 for r in done.values())
    return ("Trained on " + ", ".join(
                f"{d}: {len(rs)} runs" + (cpu_counts(rs) if d.startswith("cpu") else "")
                for d, rs in sorted(devices.items()))
            + (f" ({together} of them with other seeds as one vmapped program)"
               if together else "") + ". ")


def cpu_counts(runs: list[dict]) -> str:
    """How many CPUs a device's runs could use, where any recorded it (``cpus``): on a CPU,
    a product split among fewer threads rounds differently. Empty where none did."""
    cpus: dict[int | None, int] = {}
    for r in runs:
        cpus[r.get("cpus")] = cpus.get(r.get("cpus"), 0) + 1
    if not set(cpus) - {None}:
        return ""
    parts = [f"{n} on {c} CPU{'s' if c != 1 else ''}" for c, n in sorted(
        (c, n) for c, n in cpus.items() if c is not None)]
    if None in cpus:
        parts.append(f"{cpus[None]} with no CPU count recorded")
    return " (" + ", ".join(parts) + ")"


def variant(r: dict) -> str:
    """How a run computed, as far as it changes the numbers: its matmul precision (the
    device's own where it is ``default``: float32 on a CPU, TF32 on a recent GPU) and the
    code version. Results written before these were recorded ran at the default precision
    (on a CPU where no device is recorded) and name no code version."""
    precision = r.get("precision", "default")
    if precision == "default":
        precision = f"default on {str(r.get('device', 'cpu')).split(':')[0].strip()}"
    return precision + (f", {r['code']}" if r.get("code") else "")


def mixed_cells(sweep: Sweep, done: dict) -> list[str]:
    """The cells (label, task, size and other grid values; seeds pooled) whose finished
    runs differ in :func:`variant`, each as ``"task label size: variant ×n, ..."``."""
    cells: dict[tuple, dict[str, int]] = {}
    for p in sweep.points:
        r = done.get(run_name(p))
        if r is None:
            continue
        rest = tuple(sorted((k, str(v)) for k, v in p.cell.items() if k != "seed"))
        counts = cells.setdefault((p.settings.get("task"), p.label,
                                   p.settings.get("train_size"), rest), {})
        counts[variant(r)] = counts.get(variant(r), 0) + 1
    return [f"{task} {label} {size}: " + ", ".join(f"{v} ×{n}" for v, n in counts.items())
            for (task, label, size, _), counts in cells.items() if len(counts) > 1]


def check_mixed(sweep: Sweep, done: dict, allow: bool) -> list[str]:
    """The mixed cells, which a table may pool only when told to (``--allow-mixed``, or
    ``"allow_mixed": true`` in a sweep that predates the precision and code fields)."""
    mixed = mixed_cells(sweep, done)
    if mixed and not (allow or sweep.spec.get("allow_mixed") is True):
        raise UserError(f"Sweep {sweep.name} would pool runs of different precisions, devices "
                        f"or code versions in {len(mixed)} cell(s) ({'; '.join(mixed[:3])}"
                        f"{'; ...' if len(mixed) > 3 else ''}); rerun them alike, or pass "
                        f"--allow-mixed to pool them and list them on the page.")
    return mixed


def table_group(sweep: Sweep, title: str, group) -> tuple[list | None, list | None]:
    """A ``tables`` entry's labels and train sizes: a list of labels (every size), or
    ``{"labels": [...], "sizes": [...]}``."""
    if group is None or isinstance(group, list):
        return group, None
    if isinstance(group, dict) and set(group) <= {"labels", "sizes"} and "labels" in group:
        return group["labels"], group.get("sizes")
    raise UserError(f"Sweep {sweep.name}: the table {title!r} should be a list of labels or "
                    '{"labels": [...], "sizes": [...]}; fix its entry in "tables".')


def page(sweep: Sweep, done: dict, failed: dict, majority: dict,
         allow_mixed: bool = False) -> str:
    groups = sweep.spec.get("tables") or {"Test scores (%), best dev epoch": None}
    total = len(sweep.points)
    mixed = check_mixed(sweep, done, allow_mixed)
    parts = [f"# {sweep.name}", "", sweep.spec.get("description", "").strip(), "",
             f"{len(done)} of {total} runs finished"
             + (f", {len(failed)} failed" if failed else "") + ". " + where_run(done)
             + "Generated by `experiments/aggregate.py` from the result files beside this "
             "page.", ""]
    if mixed:
        parts += ["Cells that pool runs of different precisions, devices or code versions "
                  "(their seeds did not all compute alike): " + "; ".join(mixed) + ".", ""]
    for title, group in groups.items():
        labels, sizes = table_group(sweep, title, group)
        test, learns = table(sweep, done, "test", majority, labels, sizes)
        parts += [f"## {title}", "", test, ""]
    parts += [
             "Cells: mean ± std over seeds; (k/N): only k of the N seeds have finished; †: "
             "the seeds' mean minus two standard errors is not above the majority-class score "
             "of the test set (one seed: not above it). avg (learns): the tasks where the "
             "baseline of that size has at least two seeds and is not †.",
             ""]
    majors = {t: m for t, m in majority.items()
              if any(p.settings["task"] == t for p in sweep.points)}
    if majors:
        parts += ["Majority class of each test set: " + "; ".join(
            f"{t} " + ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items())
            for t, m in majors.items()) + ".", ""]
    rows = [r for c in comparisons(sweep) for r in paired(sweep, done, c, learns)]
    if rows:
        head = ["comparison", "n", "tasks", "pairs", "mean diff", "std", "t-test p",
                "Wilcoxon p", "verdict"]
        parts += ["## Paired comparisons (test, points; pairs are (task, seed))", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        parts += ["| " + " | ".join(r) + " |" for r in rows]
        parts += ["", f"verdict: the paired t-test at p < {ALPHA}.", ""]
    if sweep.spec.get("claims"):
        lines, family = claims_table(sweep, done, learns)
        parts += ["## The paper's claims", "", *lines, "",
                  "result: the mean test difference of the first method named against the "
                  "second in points, paired over (task, seed), with its 95% interval; per "
                  "task: its mean difference and (pairs), † where the baseline of that size "
                  "does not score clearly above the majority class over at least two seeds. "
                  f"Holm p: the t-test's p adjusted (Holm) for the {family} t-tests over all "
                  "tasks in this table at once. detectable: the smallest difference a paired "
                  f"t-test at p < {ALPHA} over these pairs would find with 80% power. "
                  f"verdict: agrees or disagrees only where Holm p < {ALPHA}; \"excludes the "
                  "paper's effect\" where the interval lies wholly on the near side of the "
                  "difference the paper reports; otherwise \"cannot tell\" (never evidence of "
                  "equality). Layers kept: against the paper's share, against random "
                  "switches, which keep half the layers (binomial test), and how alike the "
                  "layers kept by runs of one task are against runs of different tasks "
                  "(Jaccard similarity; permutation test over the tasks).", ""]
    dev, _ = table(sweep, done, "dev", majority)
    parts += ["## Dev scores (%)", "", dev, ""]
    tasks = list(dict.fromkeys(p.settings["task"] for p in sweep.points))
    verdicts = baseline_verdicts(sweep, done, majority,
                                 {t: select_metric(t, done) for t in tasks})
    parts += not_finished(sweep, done, failed, verdicts)
    return "\n".join(parts)


def not_finished(sweep: Sweep, done: dict, failed: dict, verdicts: dict) -> list[str]:
    """The grid's runs without a result, per method and size, with the seeds each task
    still lacks (marked by what its baseline of that size shows: ``verdicts``, from
    :func:`baseline_verdicts`), and the failed runs' errors."""
    missing = [p for p in sweep.points if run_name(p) not in done]
    if not missing:
        return []
    cells: dict[tuple, dict[str, list]] = {}
    for p in missing:
        tasks = cells.setdefault((p.label, p.settings.get("train_size")), {})
        tasks.setdefault(p.settings["task"], []).append(p.settings.get("seed"))
    mark = {None: "?", False: "†", True: ""}
    parts = ["## Not finished", "",
             "Runs the grid lists that have no result yet (run the sweep again to "
             "continue it; `--plan` estimates the cost).", "",
             "| method | n | runs left | seeds left per task |", "|---|---|---|---|"]
    for (label, size), tasks in cells.items():
        left = "; ".join(f"{task}{mark[verdicts.get((size, task))]} "
                         f"{', '.join(map(str, sorted(seeds)))}"
                         for task, seeds in tasks.items())
        parts.append(f"| {label} | {size or 'full'} | "
                     f"{sum(map(len, tasks.values()))} | {left} |")
    at_majority = sum(verdicts.get((p.settings.get("train_size"), p.settings["task"])) is False
                      for p in missing)
    parts += ["", "†: the baseline of that task and size does not score clearly above the "
              f"majority class over at least two seeds ({at_majority} of the {len(missing)} "
              "runs left); ?: fewer than two of that baseline's seeds have finished.", ""]
    broken = [p for p in missing if run_name(p) in failed]
    if broken:
        parts += ["Failed runs (their `failed.json` has the traceback):", ""]
        parts += [f"- {run_name(p)}: {failed[run_name(p)]['error']}" for p in broken]
        parts.append("")
    return parts


def figures(sweep: Sweep, done: dict) -> list[Path]:
    """Switch probabilities over training and the learned rationals of the AA runs."""
    from figures import rationals_figure, switches_figure

    aa = [p for p in sweep.points if p.label == sweep.role("learned") and run_name(p) in done]
    if not aa:
        return []
    out = sweep.results / "figures"
    written = []
    for size in dict.fromkeys(p.settings.get("train_size") for p in aa):
        runs = [sweep.result_dir(p) for p in aa if p.settings.get("train_size") == size]
        written.append(switches_figure(runs, out / f"switches_{size}.png"))
        written.append(rationals_figure(runs, out / f"rationals_{size}.png"))
    return written


README = SWEEPS.parent.parent / "README.md"
README_END = "<!-- end of generated part -->"


def readme_start(name: str) -> str:
    """The marker after which the README quotes sweep ``name``'s TABLE.md."""
    return f"<!-- generated from experiments/results/{name}/TABLE.md -->"


def section(table: str, title: str) -> list[str]:
    """The Markdown table under the heading that starts with ``title``."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append(line)
    return rows


def readme_excerpt(table: str) -> str:
    """What the README's Results section quotes from a sweep's TABLE.md: its status line,
    Table 2's rows with results, and the paper's claims with what was measured."""
    lines = table.splitlines()
    status = next(line for line in lines if " runs finished" in line)
    head, *rows = section(table, "Table 2")
    rows = rows[:1] + [r for r in rows[1:] if any(
        c.strip() != "–" for c in r.strip("|").split("|")[2:-2])]
    claims = section(table, "The paper's claims")
    legend = lines[lines.index(claims[-1]) + 2]
    return "\n".join([f"*{status}*", "", "Table 2 (the rows with at least one result):", "", head,
                      *rows, "", "The paper's claims beside what was measured here (every "
                      "paired comparison is in TABLE.md):", "", *claims, "", legend])


def readme_with(readme: str, excerpt: str, name: str) -> str:
    """``readme`` with the part between sweep ``name``'s marker and the next end marker
    replaced by ``excerpt``."""
    start = readme_start(name)
    before, rest = readme.split(start, 1)
    _, after = rest.split(README_END, 1)
    return f"{before}{start}\n{excerpt}\n{README_END}{after}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", help="sweep names (default: all with results)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed TABLE.md files, write nothing")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="pool runs of different precisions, devices or code versions "
                        "in one cell (the page lists those cells)")
    args = parser.parse_args(argv)
    try:
        return aggregate(args)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def generated(sweep: Sweep, done: dict, failed: dict, majority: dict,
              allow_mixed: bool = False) -> dict[Path, str]:
    """The text the results of ``sweep`` (:func:`read_results`) give its ``TABLE.md`` and,
    for a sweep of ``experiments/results`` that the README quotes (its marker is there),
    the README, by path."""
    text = page(sweep, done, failed, majority, allow_mixed)
    files = {sweep.results / "TABLE.md": text}
    name = sweep.results.resolve().name
    readme = README.read_text() if README.is_file() else ""
    if sweep.results.resolve().parent == RESULTS.resolve() and readme_start(name) in readme:
        files[README] = readme_with(readme, readme_excerpt(text), name)
    return files


def refresh(sweep: Sweep) -> list[Path]:
    """Rewrites what :func:`generated` says has changed (no figures); the paths written.
    ``sweep.py --commit`` calls it after each run, so that every commit of results
    carries tables that agree with them."""
    written = []
    for path, text in generated(sweep, *read_results(sweep), majority_scores()).items():
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
            written.append(path)
    return written


def aggregate(args: argparse.Namespace) -> int:
    names = args.sweeps or sorted(p.stem for p in SWEEPS.glob("*.json")
                                  if (RESULTS / p.stem).is_dir())
    majority = majority_scores()
    differ = []
    for name in names:
        sweep = Sweep.load(SWEEPS / f"{name}.json")
        done, failed = read_results(sweep)
        for path, text in generated(sweep, done, failed, majority, args.allow_mixed).items():
            if args.check:
                if not path.is_file() or path.read_text() != text:
                    differ.append(str(path) + (" (its Results excerpt)" if path == README
                                               else ""))
                continue
            if path == README and path.read_text() == text:
                continue
            write_text_atomic(path, text)
            print(f"{path}: " + ("Results excerpt" if path == README else f"{len(done)} runs"))
        if not args.check and not args.no_figures:
            for f in figures(sweep, done):
                print(f"  {f}")
    if differ:
        print("differs from the results: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Markdown tables of a sweep's page: one row per method label (and other grid value),
one cell per task, and the paired comparisons between labels."""

from __future__ import annotations

import json
import math
import statistics

from aa_jax.data.glue import get_task
from aa_jax.errors import UserError
from experiments.grid import Sweep, run_name
from experiments.records import score
from experiments.significance import ALPHA, at_chance, fmt_p, tests


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


def table_group(sweep: Sweep, title: str, group) -> tuple[list | None, list | None]:
    """A ``tables`` entry's labels and train sizes: a list of labels (every size), or
    ``{"labels": [...], "sizes": [...]}``."""
    if group is None or isinstance(group, list):
        return group, None
    if isinstance(group, dict) and set(group) <= {"labels", "sizes"} and "labels" in group:
        return group["labels"], group.get("sizes")
    raise UserError(f"Sweep {sweep.name}: the table {title!r} should be a list of labels or "
                    '{"labels": [...], "sizes": [...]}; fix its entry in "tables".')


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

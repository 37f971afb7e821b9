"""The learning-rate rule of a pilot, applied to the reference method's dev scores only.

    uv run python -m experiments.learning_rate experiments/sweeps/pilot/mpnet_lr.json
    uv run python -m experiments.learning_rate experiments/sweeps/pilot/mpnet_lr.json --write

For each learning rate of the pilot: each task's mean over its seeds of the dev score on
the metric the run selects its epoch by, then the mean over the tasks. The rule picks the
rate with the highest mean; a rate within ``TIE`` points of it (scores in percent) that is
smaller goes first, the smallest such rate winning. Only the runs of the sweep's
``reference`` label (the baseline) are read, and only their dev scores; nothing is picked
until every such run of the pilot has finished. ``--write`` writes EVIDENCE.md beside the
results.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from aa_jax.errors import UserError
from experiments.grid import Sweep, run_name
from experiments.records import read_results
from experiments.switch_rate import show_evidence

TIE = 0.5  # points of the dev score, in percent


def dev_score(record: dict, name: str) -> float:
    """The dev score (in percent) a run selected its epoch by, or one sentence naming the
    record that lacks it."""
    metric = record.get("select_metric")
    dev = record.get("dev")
    value = dev.get(metric) if isinstance(dev, dict) and isinstance(metric, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise UserError(f"The result of {name} has no finite dev score on its select_metric; "
                        f"restore its result.json or delete its folder to run it again.")
    return 100.0 * float(value)


def rate_means(sweep: Sweep) -> tuple[dict[float, dict], int, int]:
    """``({rate: {task: [dev scores]}}, finished, all)`` of the reference label's runs."""
    reference = sweep.role("reference")
    done, _ = read_results(sweep)
    scores: dict[float, dict[str, list[float]]] = {}
    runs = finished = 0
    for p in sweep.points:
        if p.label != reference:
            continue
        runs += 1
        rate = p.settings.get("learning_rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise UserError(f"A run of {sweep.name} has no numeric learning_rate; give the "
                            f"pilot's rates as numbers in its grid.")
        rate = float(rate)
        by_task = scores.setdefault(rate, {})
        name = run_name(p)
        if name in done:
            finished += 1
            by_task.setdefault(p.settings["task"], []).append(dev_score(done[name], name))
    return scores, finished, runs


def pick(means: dict[float, float], tie: float = TIE) -> float:
    """The rate the rule picks from ``{rate: mean dev score}``: the smallest rate within
    ``tie`` points of the best."""
    best = max(means.values())
    return min(rate for rate, m in means.items() if m >= best - tie)


def evidence(sweep: Sweep) -> tuple[list[str], float | None]:
    """The evidence table's lines and the rate the rule picks (None until every reference
    run has finished)."""
    scores, finished, runs = rate_means(sweep)
    tasks = sorted({t for by_task in scores.values() for t in by_task})
    lines = ["| learning rate | " + " | ".join(f"{t} (mean of seeds)" for t in tasks)
             + " | mean of tasks |", "|---" * (len(tasks) + 2) + "|"]
    means = {}
    for rate in sorted(scores, reverse=True):
        by_task = scores[rate]
        cells = [f"{sum(v) / len(v):.2f} ({len(v)})" if (v := by_task.get(t)) else "–"
                 for t in tasks]
        if by_task and all(by_task.get(t) for t in tasks):
            means[rate] = sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " | "
                     + (f"{means[rate]:.2f}" if rate in means else "–") + " |")
    complete = runs > 0 and finished == runs
    chosen = pick(means) if complete and means else None
    lines += ["", f"{finished} of {runs} runs of the reference label have finished."]
    return lines, chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the pilot's sweep file")
    parser.add_argument("--write", action="store_true", help="write EVIDENCE.md")
    args = parser.parse_args(argv)
    title = f"The learning-rate pilot {Path(args.sweep).stem}"
    return show_evidence(args.sweep, evidence, title, lambda chosen: (
        f"Dev scores in percent, on each run's selection metric; a tie within {TIE} points "
        "goes to the smaller rate. " + (f"The rule picks learning rate {chosen:g}."
                                        if chosen is not None else
                                        "The rule picks no rate yet: the pilot has runs "
                                        "to finish.")), args.write)


if __name__ == "__main__":
    sys.exit(main())

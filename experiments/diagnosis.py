"""The rule of the STS-B collapse study, applied to its results.

    uv run python -m experiments.diagnosis            # print the finding
    uv run python -m experiments.diagnosis --write    # and write DIAGNOSIS.md beside the runs

Reads the finished runs of ``experiments/sweeps/stsb_collapse.json``. The rule, stated
before the sweep's first result (docs/experiments.md, "Why AA collapses on STS-B"):

* a run has **collapsed** when its test Spearman is below the lowest test Spearman of the
  5 baseline seeds of its size in the same sweep, or when it diverged (the sweep recorded
  it as failed with a non-finite loss);
* a size has **a collapse to explain** when at least 2 of the reference ``aa``'s 5 seeds
  collapsed;
* a candidate (a label that changes one thing against ``aa``) **passes the rule** at that
  size when at most 1 of its 5 seeds collapsed; where several pass, each is named; where
  none does, no candidate passes. With 5 seeds a passing candidate is a cause to confirm,
  not a proof (a change that does nothing leaves at most 1 of 5 seeds collapsed about a
  third of the time where ``aa`` collapses on 2 of 5).

A size whose baseline, ``aa`` or candidate has not finished all 5 seeds is reported as
open, and nothing is concluded there. Where a size has 10 seeds (the grid added at 500
examples, seeds 11, 22, 33, 44, 55), the rule is applied again over all 10 with the
thresholds scaled: at least 4 of ``aa``'s 10 collapsed to explain, at most 2 of a
candidate's 10 to pass. Beside the rule's counts, the page shows what the
runs' ``metrics.jsonl`` recorded about their rationals at the best epoch (the largest
|R(x)| over the inputs each layer's rational saw, the widest input range), the
rationals' mean gradient norm over training, and the first epoch whose mean training
loss fell below half the variance of STS-B's training labels (predicting their mean
costs the variance; a run that stays near it has not started to fit), for the collapsed
runs and the others, and each label's mean test Spearman against ``aa``'s (the difference
with Welch's 95% interval, unadjusted: a description of how far a label moved the scores,
not a test of the rule). None of these enters the rule.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from aa_jax.checkpoint import write_text_atomic
from experiments.grid import SWEEPS, Sweep, run_name
from experiments.records import check_commits, read_results
from experiments.significance import welch

SPEC = SWEEPS / "stsb_collapse.json"
REFERENCE, BASELINE = "aa", "baseline"
SEEDS = 5
MOST_COLLAPSED = 1  # a cause leaves at most this many of its seeds collapsed
FEWEST_TO_EXPLAIN = 2  # the reference must collapse on at least this many
# The variance of STS-B's training labels (all 5,749 of GLUE's train split, 0-5 scale):
# the squared error of predicting their mean.
LABEL_VARIANCE = 2.1441


def spearman(r: dict) -> float:
    return 100 * r["test"]["spearman"]


def rational_summary(run_dir: Path, best_epoch: int) -> dict[str, float]:
    """From a run's metrics.jsonl: at its best epoch, the largest |R(x)| and the widest
    input (max |x|) over its layers' rationals; over all epochs, the rationals' mean
    gradient norm; the first epoch whose mean training loss fell below half
    ``LABEL_VARIANCE`` (every run). Rational entries are absent where the run recorded
    none (a baseline)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    out: dict[str, float] = {}
    best = next((e for e in lines if e.get("epoch") == best_epoch), None)
    rationals = (best or {}).get("rationals") or {}
    outputs = [max(abs(v["output_min"]), abs(v["output_max"])) for v in rationals.values()
               if v.get("output_min") is not None and v.get("output_max") is not None]
    inputs = [max(abs(v["input_min"]), abs(v["input_max"])) for v in rationals.values()
              if v.get("input_min") is not None and v.get("input_max") is not None]
    if outputs:
        out["max |R(x)|"] = max(outputs)
    if inputs:
        out["max |x|"] = max(inputs)
    norms = [e["grad_norms"]["rational"]["mean"] for e in lines
             if (e.get("grad_norms") or {}).get("rational")]
    if norms:
        out["rational grad norm"] = statistics.mean(norms)
    fitting = [e["epoch"] for e in lines if isinstance(e.get("loss"), (int, float))
               and isinstance(e.get("epoch"), int) and e["loss"] < LABEL_VARIANCE / 2]
    if fitting:
        out["fits from epoch"] = min(fitting)
    return out


DIVERGED = "Training diverged"  # how a failure record of a non-finite loss begins


def diverged(failure: dict) -> bool:
    return DIVERGED in str(failure.get("error", ""))


def finding(sweep: Sweep, done: dict, failed: dict | None = None) -> list[str]:
    """The study's page as Markdown lines: per size, the rule on the first 5 seeds, then,
    where the size has 10, on all 10 (thresholds scaled: at least 4 of ``aa``'s 10 to
    explain, at most 2 of a candidate's 10 to pass)."""
    lines = []
    for size in dict.fromkeys(p.settings["train_size"] for p in sweep.points):
        seeds = list(dict.fromkeys(p.settings["seed"] for p in sweep.points
                                   if p.settings["train_size"] == size))
        for chosen in ([seeds[:SEEDS], seeds] if len(seeds) > SEEDS else [seeds]):
            lines += [f"## {size} examples, seeds {', '.join(map(str, chosen))}", ""]
            lines += rule_at(sweep, done, failed or {}, size, chosen)
    return lines


def rule_at(sweep: Sweep, done: dict, failed: dict, size, seeds: list[int]) -> list[str]:
    """The rule at one size over the runs of ``seeds`` (a diverged run counts as
    collapsed), as Markdown lines."""
    n_seeds = len(seeds)
    explain = math.ceil(FEWEST_TO_EXPLAIN * n_seeds / SEEDS)
    most = MOST_COLLAPSED * n_seeds // SEEDS
    by: dict[str, list] = {}
    lost: dict[str, int] = {}
    for p in sweep.points:
        if p.settings["train_size"] != size or p.settings["seed"] not in seeds:
            continue
        r = done.get(run_name(p))
        if r is not None:
            by.setdefault(p.label, []).append((p, r))
        elif diverged(failed.get(run_name(p)) or {}):
            lost[p.label] = lost.get(p.label, 0) + 1
    labels = list(dict.fromkeys(p.label for p in sweep.points))
    candidates = [x for x in labels if x not in (BASELINE, REFERENCE)]
    lines = []
    base = [spearman(r) for _, r in by.get(BASELINE, [])]
    if lost.get(BASELINE):
        lines += [f"The baseline diverged on {lost[BASELINE]} seed(s); the threshold is "
                  "taken over the seeds that finished.", ""]
    if len(base) + lost.get(BASELINE, 0) < n_seeds or not base:
        return lines + [f"Open: {len(base)} of the baseline's {n_seeds} seeds have finished; "
                        "the threshold is not known yet.", ""]
    floor = min(base)
    lines += [f"Threshold: the baseline's lowest test Spearman, {floor:.2f}.", "",
              "| label | seeds | test Spearman per seed | collapsed | max abs R(x), "
              "collapsed / others | max abs x | rational grad norm | loss below half the "
              "label variance from epoch |",
              "|---|---|---|---|---|---|---|---|"]
    counts, all_scores = {}, {}
    for label in labels:
        runs = by.get(label, [])
        scores = all_scores[label] = [spearman(r) for _, r in runs]
        collapsed = [v < floor for v in scores]
        gone = lost.get(label, 0)
        counts[label] = (sum(collapsed) + gone, len(scores) + gone)
        summaries = [rational_summary(sweep.result_dir(p), r["best_epoch"]) for p, r in runs]

        def split(key, summaries=summaries, collapsed=collapsed):
            parts = []
            for want in (True, False):
                vals = [x[key] for x, c in zip(summaries, collapsed) if c == want and key in x]
                parts.append(f"{statistics.mean(vals):.3g}" if vals else "–")
            return " / ".join(parts)

        lines.append(f"| {label} | {len(scores) + gone} | "
                     + ", ".join([f"{v:.2f}" for v in scores] + ["diverged"] * gone)
                     + f" | {counts[label][0]} of {counts[label][1]} | "
                     f"{split('max |R(x)|')} | {split('max |x|')} | "
                     f"{split('rational grad norm')} | {split('fits from epoch')} |")
    lines += ["", *mean_differences(all_scores), ""]
    ref_collapsed, ref_n = counts.get(REFERENCE, (0, 0))
    if ref_n < n_seeds:
        return lines + [f"Open: {ref_n} of {REFERENCE}'s {n_seeds} seeds have finished.", ""]
    if ref_collapsed < explain:
        return lines + [f"No collapse to explain: {ref_collapsed} of {REFERENCE}'s {n_seeds} "
                        f"seeds fall below the threshold (the rule asks for at least "
                        f"{explain}).", ""]
    causes, open_ = [], []
    for label in candidates:
        c, n = counts.get(label, (0, 0))
        if n < n_seeds:
            open_.append(f"{label} ({n} of {n_seeds} seeds" + (
                f"; {c} collapsed already, so it cannot pass)" if c > most else ")"))
        elif c <= most:
            causes.append(f"{label} ({c} of {n} collapsed)")
    tested = [x for x in candidates if counts.get(x, (0, 0))[1] >= n_seeds]
    verdict = (f"{REFERENCE} collapsed on {ref_collapsed} of {n_seeds} seeds. "
               + (f"Passes the rule (a candidate cause, to confirm with more seeds): "
                  f"{'; '.join(causes)}. " if causes else
                  f"No candidate tested ({', '.join(tested) or 'none yet'}) passes the "
                  f"rule. ")
               + (f"Still open: {', '.join(open_)}." if open_ else ""))
    return lines + [verdict.strip(), ""]


def mean_differences(scores: dict[str, list[float]]) -> list[str]:
    """One sentence: each label's mean test Spearman minus ``aa``'s with Welch's 95%
    interval (described, not the rule; diverged runs have no score and are left out)."""
    ref = scores.get(REFERENCE, [])
    parts = []
    for label, mine in scores.items():
        if label == REFERENCE or len(mine) < 2 or len(ref) < 2:
            continue
        diff, low, high, _ = welch(mine, ref)
        parts.append(f"{label} {diff:+.2f} (no spread in either)" if math.isnan(low) else
                     f"{label} {diff:+.2f} [{low:+.2f}, {high:+.2f}]")
    if not parts:
        return []
    return [f"Described, not the rule: mean test Spearman minus {REFERENCE}'s "
            f"({statistics.mean(ref):.2f}), with Welch's 95% interval (unadjusted): "
            + "; ".join(parts) + "."]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.diagnosis",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="write DIAGNOSIS.md into the sweep's results folder")
    args = parser.parse_args(argv)
    sweep = Sweep.load(SPEC)
    done, failed = read_results(sweep)
    check_commits(sweep, done)
    text = "\n".join(["# Why AA collapses on STS-B: the rule applied", "",
                      "Generated by `uv run python -m experiments.diagnosis --write` from "
                      "the results of `experiments/sweeps/stsb_collapse.json`; the rule is "
                      "in the module's docstring and in docs/experiments.md.", "",
                      *finding(sweep, done, failed)]).rstrip() + "\n"
    print(text)
    if args.write:
        sweep.results.mkdir(parents=True, exist_ok=True)
        write_text_atomic(sweep.results / "DIAGNOSIS.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

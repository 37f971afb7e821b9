"""Result tables in the paper's layout, paired tests and figures, from the committed results.

    uv run python -m experiments.aggregate            # every sweep with results
    uv run python -m experiments.aggregate paper      # one sweep
    uv run python -m experiments.aggregate --check    # exit 1 if a committed table differs

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
kept layers (``layers_kept`` with the paper's ``paper_fraction``, or with ``against``:
``{"sweep": <another sweep>, "label": <its label>}``, the share of layers kept against
that sweep's label's, per task and size) or stored adapter weights it is about; per size,
the measured difference, its tests and a verdict.

The documentation's results page (docs/results.md) quotes a sweep's status line, Table 2 and the claims between
two markers (:func:`~experiments.page.readme_start`, :data:`~experiments.page.README_END`)
for each sweep it names there (``paper_v2``, ``paper``); aggregating such a sweep
refreshes its excerpt, and ``--check`` verifies it too.

The work is split by what it does: :mod:`experiments.records` reads the result files,
:mod:`experiments.tables` and :mod:`experiments.claims` build the tables from them with
the statistics of :mod:`experiments.significance`, and :mod:`experiments.page` puts the
page and the results page's excerpt together.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aa_jax.checkpoint import write_text_atomic
from aa_jax.errors import UserError
from experiments.grid import RESULTS, SWEEPS, Sweep, run_name
from experiments.page import README, generated
from experiments.records import majority_scores, read_results


def figures(sweep: Sweep, done: dict) -> list[Path]:
    """Switch probabilities over training and the learned rationals of the AA runs."""
    from experiments.figures import rationals_figure, switches_figure

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.aggregate",
                                     description=__doc__.splitlines()[0])
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

"""Result tables in the paper's layout: test score per task and method, mean ± std over seeds.

    uv run python experiments/tables.py experiments/results/methods_100

Reads every complete run (result.json) under the folder and writes TABLE.md beside them:
one row per (method, train size), one column per task, each cell the task's main metric
(CoLA MCC, STS-B Spearman, MRPC/QQP F1, else accuracy) in percent, and the number of
selected layers for AA. Unfinished runs are left out and counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

from aa_jax.checkpoint import is_complete, write_text_atomic

METHOD_ORDER = ["baseline", "adapterdrop", "aa", "aa_focused", "last_n", "switch_only",
                "rational_only"]


def load_results(root: Path) -> tuple[list[dict], int]:
    results, unfinished = [], 0
    for config in sorted(root.glob("*/config.json")):
        if is_complete(config.parent):
            results.append(json.loads((config.parent / "result.json").read_text()))
        else:
            unfinished += 1
    return results, unfinished


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(results: list[dict]) -> str:
    tasks = sorted({r["task"] for r in results})
    groups = collections.defaultdict(list)
    for r in results:
        groups[(r["method"], r["train_size"], r["task"])].append(r)
    rows = sorted({(r["method"], r["train_size"]) for r in results},
                  key=lambda m: (METHOD_ORDER.index(m[0]) if m[0] in METHOD_ORDER else 99,
                                 m[1] or 10**9))
    head = ["method", "n"] + [f"{t} ({results_metric(results, t)})" for t in tasks] + \
        ["avg", "layers", "adapter weights"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, size in rows:
        scores, layers, weights = [], [], []
        row = [method, str(size or "full")]
        for t in tasks:
            runs = groups.get((method, size, t), [])
            values = [r["test"][r["select_metric"]] for r in runs]
            row.append(cell(values) if values else "–")
            if values:
                scores.append(statistics.mean(values))
            layers += [len(r["selected_layers"]) for r in runs]
            weights += [r["adapter_weights"] for r in runs]
        row.append(f"{100 * statistics.mean(scores):.2f}" if len(scores) == len(tasks) else "–")
        row.append(f"{statistics.mean(layers):.1f}" if layers else "–")
        row.append(f"{int(statistics.mean(weights)):,}" if weights else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def results_metric(results: list[dict], task: str) -> str:
    return next(r["select_metric"] for r in results if r["task"] == task)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a folder of run directories")
    args = parser.parse_args(argv)
    root = Path(args.results)
    results, unfinished = load_results(root)
    if not results:
        print(f"no finished runs under {root}", file=sys.stderr)
        return 2
    seeds = sorted({r["seed"] for r in results})
    models = sorted({r["model"] for r in results})
    text = (f"# {root.name}\n\nTest scores (%) of the best dev epoch; model "
            f"{', '.join(models)}; seeds {seeds}; {len(results)} finished runs"
            f"{f', {unfinished} unfinished' if unfinished else ''}.\n\n{table(results)}\n")
    write_text_atomic(root / "TABLE.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

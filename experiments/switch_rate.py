"""The switch-rate rule of paper_v2, applied to the pilot's switch dynamics only.

    uv run python experiments/switch_rate.py            # print the evidence table
    uv run python experiments/switch_rate.py --write    # and write EVIDENCE.md beside the runs
    uv run python experiments/switch_rate.py experiments/sweeps/pilot/<other pilot>.json

Reads ``metrics.jsonl`` of every finished run of a switch-rate pilot (by default
``experiments/sweeps/pilot/switch_rate.json``, paper_v2's; each label one switch rate),
never ``result.json``: no dev or test score enters the choice. For each switch rate it
counts, at the end of the first quarter of training (epoch ``ceil(epochs / 4)``), the
switches that have committed: p(adapter) below 0.01 or above 0.99. The rule picks the
largest rate whose runs have all finished and at which at most half of all their switches
have committed; rates run largest first, so a rate that fails the rule is followed by the
next smaller one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from aa_jax.checkpoint import write_text_atomic
from aa_jax.errors import UserError
from experiments.grid import SWEEPS, Sweep

SPEC = SWEEPS / "pilot" / "switch_rate.json"
COMMITTED = (0.01, 0.99)
MOST_COMMITTED = 0.5


def committed_share(probs: list[float]) -> tuple[int, int]:
    """(committed, all) switches among ``probs``."""
    low, high = COMMITTED
    return sum(p < low or p > high for p in probs), len(probs)


def run_evidence(run_dir: Path, epochs: int) -> dict:
    """The switches of one run after its first epoch and at the end of its first quarter."""
    quarter = math.ceil(epochs / 4)
    path = run_dir / "metrics.jsonl"
    try:
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_epoch = {r["epoch"]: [float(v) for v in r.get("switch_probs", {}).values()]
                    for r in history}
        first, at_quarter = by_epoch[1], by_epoch[quarter]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UserError(f"{path} does not hold the switch probabilities of epochs 1 and "
                        f"{quarter}; restore it with git checkout, or delete {run_dir} so "
                        f"that the pilot runs it again.") from None
    return {"first": committed_share(first), "quarter": committed_share(at_quarter),
            "quarter_epoch": quarter}


def evidence(sweep: Sweep) -> tuple[list[str], str | None]:
    """The evidence table's lines and the rate the rule picks (None while undecided)."""
    rates: dict[str, dict] = {}
    for p in sweep.points:
        rate = p.settings.get("switch_learning_rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise UserError(f"Label {p.label} of {sweep.name} sets no numeric "
                            f"switch_learning_rate; a switch-rate pilot gives each label one.")
        entry = rates.setdefault(p.label, {"rate": rate, "runs": 0, "done": 0,
                                           "first": [0, 0], "quarter": [0, 0]})
        entry["runs"] += 1
        run = sweep.result_dir(p)
        if not (run / "result.json").is_file():  # finished runs only (result.json is last)
            continue
        e = run_evidence(run, p.settings.get("epochs", 20))
        entry["done"] += 1
        for key in ("first", "quarter"):
            entry[key][0] += e[key][0]
            entry[key][1] += e[key][1]
        entry["quarter_epoch"] = e["quarter_epoch"]
    lines = ["| switch rate (rational rate) | runs finished | committed after epoch 1 | "
             "committed at the end of the first quarter | meets the rule |",
             "|---|---|---|---|---|"]
    chosen = None
    undecided = False
    for label, e in sorted(rates.items(), key=lambda kv: -kv[1]["rate"]):
        def share(pair):
            return f"{pair[0]} of {pair[1]} ({100 * pair[0] / pair[1]:.0f}%)" if pair[1] else "–"
        complete = e["done"] == e["runs"]
        meets = complete and e["quarter"][1] and e["quarter"][0] <= MOST_COMMITTED * e["quarter"][1]
        verdict = ("–" if not complete else "yes" if meets else "no")
        if chosen is None and not undecided:
            if meets:
                chosen = label
            elif not complete:
                undecided = True
        lines.append(f"| {e['rate']:g} ({label}) | {e['done']} of {e['runs']} | "
                     f"{share(e['first'])} | {share(e['quarter'])} | {verdict} |")
    return lines, chosen


def show_evidence(path, evidence, title: str, footer, write: bool) -> int:
    """A pilot's rule applied to the sweep at ``path``: ``evidence(sweep)`` gives the table's
    lines and the choice, ``footer(choice)`` the sentence under them; printed, and written
    to EVIDENCE.md beside the results with ``write``. 2 with one sentence on bad input."""
    try:
        sweep = Sweep.load(path)
        lines, chosen = evidence(sweep)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    text = "\n".join([f"# {title}", "", str(sweep.spec.get("description", "")), "", *lines,
                      "", footer(chosen), ""])
    print(text)
    if write:
        write_text_atomic(sweep.results / "EVIDENCE.md", text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", default=str(SPEC),
                        help="the pilot's sweep file (default: paper_v2's)")
    parser.add_argument("--write", action="store_true", help="write EVIDENCE.md")
    args = parser.parse_args(argv)
    return show_evidence(args.sweep, evidence, "The switch-rate pilot", lambda chosen: (
        f"committed: p(adapter) below {COMMITTED[0]} or above {COMMITTED[1]}, counted over "
        "every switch of every finished run. The rule picks "
        + (f"{chosen}." if chosen else "no rate yet: the largest rate still to decide has "
           "runs to finish (or no rate meets it).")), args.write)


if __name__ == "__main__":
    sys.exit(main())

"""What is left of a sweep and what it will cost (``--plan``), from the measured times of
the finished runs of every sweep on this kind of device."""

from __future__ import annotations

import dataclasses
import json
import statistics

from aa_jax.config import TrainConfig
from experiments.grid import RESULTS, Point, Sweep
from experiments.workers import cpu_shares


def estimate(sweep: Sweep, points: list[Point], cpus: int | None = None
             ) -> list[tuple[Point, float | None, float | None]]:
    """Seconds per pending point, from the finished runs (any sweep) on this kind of
    device: its training time (the median of runs of the same task, size and method, else
    the same task and size, else the same task scaled by size) and its set-up and test
    evaluation (the median of the same task and size, else the same task; results older
    than ``setup_and_test_seconds`` did not record it), always of the same model (a
    12-layer MPNet run costs several MiniLM runs). None where nothing measured fits.
    With ``cpus``, runs that recorded that many CPUs come first, the others where none of
    them fits."""
    import jax

    backend = jax.default_backend()
    runs = []
    for result_file in RESULTS.glob("*/*/result.json"):
        try:
            r = json.loads(result_file.read_text())
            epochs = json.loads((result_file.parent / "config.json").read_text())["epochs"]
        except (OSError, ValueError, KeyError):
            continue
        if r.get("device", "cpu").split(":")[0] == backend:  # unrecorded: this project's CPU
            runs.append((r, epochs))
    pools = [_measured(runs)]
    if cpus is not None:
        pools.insert(0, _measured([(r, e) for r, e in runs if r.get("cpus") == cpus]))
    out = []
    for p in points:
        s = {**dataclasses.asdict(TrainConfig()), **p.settings}
        train = setup = None
        for measured, _ in pools:
            train = _train_seconds(measured, s)
            if train is not None:
                break
        for _, other in pools:
            setup = next((statistics.median(other[key]) for key in
                          ((s["model"], s["task"], s["train_size"]), (s["model"], s["task"]))
                          if key in other), None)
            if setup is not None:
                break
        out.append((p, train, setup))
    return out


def _measured(runs: list[tuple[dict, int]]) -> tuple[dict, dict]:
    """Training seconds per epoch (per example for a task alone) and set-up seconds of
    ``runs``, listed by (model, task, size, method), (model, task, size) and (model, task)."""
    measured: dict[tuple, list[float]] = {}
    other: dict[tuple, list[float]] = {}
    for r, epochs in runs:
        per_epoch = r["train_seconds"] / epochs
        m = r.get("model")
        for key in ((m, r["task"], r["train_size"], r["method"]), (m, r["task"], r["train_size"]),
                    (m, r["task"])):
            measured.setdefault(key, []).append(per_epoch / (r["train_size"] or 1)
                                                if len(key) == 2 else per_epoch)
        if "setup_and_test_seconds" in r:
            for key in ((m, r["task"], r["train_size"]), (m, r["task"])):
                other.setdefault(key, []).append(r["setup_and_test_seconds"])
    return measured, other


def _train_seconds(measured: dict, s: dict) -> float | None:
    m = s["model"]
    for key in ((m, s["task"], s["train_size"], s["method"]), (m, s["task"], s["train_size"])):
        if key in measured:
            return s["epochs"] * statistics.median(measured[key])
    per_example = measured.get((m, s["task"]))
    return (s["epochs"] * statistics.median(per_example) * (s["train_size"] or 0)
            if per_example and s["train_size"] else None)


def plan(sweep: Sweep, points: list[Point], workers: int = 1) -> None:
    """Prints what is left and its cost; ``workers`` > 1: pinned workers (``--pin-cpus``),
    priced from runs on a worker's share of the CPUs and shared out among them."""
    pending = [p for p in points if not sweep.done(p)]
    print(f"{sweep.name}: {len(points) - len(pending)} of {len(points)} runs done, "
          f"{len(pending)} to go")
    cpus = min(map(len, cpu_shares(workers))) if workers > 1 else None
    costs = estimate(sweep, pending, cpus)
    groups: dict[tuple, list[float]] = {}
    for p, train, setup in costs:
        s = p.settings
        groups.setdefault((s.get("train_size"), s.get("task")), []).append(
            (train or 0.0) + (setup or 0.0))
    for (size, task), cs in groups.items():
        print(f"  {task:6s} {size!s:>5} examples: {len(cs):4d} runs, ~{sum(cs) / 3600:.1f} h")
    train = sum(t for _, t, _ in costs if t is not None)
    setup = sum(o for _, _, o in costs if o is not None)
    no_train = sum(t is None for _, t, _ in costs)
    no_setup = sum(o is None for _, _, o in costs)
    print(f"estimated time left: {(train + setup) / 3600:.1f} h (training {train / 3600:.1f} h"
          + (f", set-up and test evaluation {setup / 3600:.1f} h" if setup else "") + ")"
          + (f"; {no_train} runs have no measured training time to go by" if no_train else "")
          + (f"; set-up and test evaluation add to the {no_setup} runs whose task has no "
             "measurement of them yet" if no_setup else ""))
    if workers > 1:
        print(f"with {workers} pinned workers of {cpus} CPU{'s' if cpus != 1 else ''} each "
              f"(timed on {cpus} where runs were): about {(train + setup) / 3600 / workers:.1f} "
              f"h of wall time")

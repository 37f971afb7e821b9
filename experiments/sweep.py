"""Runs a sweep: a base config plus a grid of overrides, one run directory per point.

    uv run python experiments/sweep.py experiments/sweeps/paper.json --glue-dir ../shared/glue

Runs execute one after another in this process and share the loaded backbone, the
allocator of ``aa-jax`` (mimalloc) and XLA's persistent compilation cache.

Where things go:
  * a run trains in ``runs/sweeps/<sweep>/<run>/`` (checkpoints included; not in git);
  * once it has finished, its config, metrics, architecture and result are copied to
    ``experiments/results/<sweep>/<run>/``, result.json last. That folder only ever holds
    finished runs (and ``failed.json`` records), so it can be committed at any moment.

Restarting is always safe: a finished run is skipped, an interrupted one resumes from its
last checkpoint. A run that raises is recorded in ``<results>/<run>/failed.json`` with its
error, the sweep goes on, and the next invocation tries it again. ``--shard i/n`` runs
every n-th (task, train size) cell, in the sweep's order, so that n machines can share a
sweep; a point whose reference (below) another shard has not produced yet is reported as
waiting. ``--workers n`` runs the n shards as n processes on this machine (for an
accelerator that one small model leaves idle: compilation and input run on the host's
cores). On a machine without one, ``--workers n --pin-cpus`` gives each process its own
share of the CPUs and lets it take the next run no other process holds, in the sweep's
order: small products cannot keep two cores busy. ``--plan`` prints what is
left and an estimate of its cost from the measured times of finished runs.
``--commit`` commits each finished run's files (or its failure record) to git as it
arrives, with the sweep's ``TABLE.md`` regenerated to include it (``aggregate.py`` draws
the figures); the processes of one sweep publish and commit one at a time.

Grid values run in the order the grid lists its keys and values (the last key varies
fastest), so put the most informative points first.

``methods`` maps a grid ``method`` value (a *label*, which names the run) to overrides; a
label that is not a method name sets ``method`` itself. Values starting with ``@`` refer
to other runs:
  * ``"@aa"``: the run labelled ``aa`` with the same task, size, seed and other settings
    (its directory, for ``architecture``); ``"@aa_left_out"``: how many layers it left
    out (AdapterDrop's ``drop_first``).
  * ``"@aa_42"``: the ``aa`` run of the cell with seed 42 (the paper's AA-focused rule:
    every seed of a task and size uses seed 42's architecture).
  * ``"@random_k"``: as many layers as the cell's ``aa`` run selected, drawn at random
    (:func:`random_layers`; for ``layers`` of ``given_layers``, the random-layers control).
  * ``"@transfer"``, ``"@transfer_size"``, ``"@transfer_left_out"``: the transferred
    architecture, chosen by the paper's rule from the ``aa`` runs named by the sweep's
    ``transfer`` entry (``{"sweep": ..., "train_size": 100, "seed": 42}``): the task
    whose AA run selects the fewest layers (at least one; ties go to the task listed
    first).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import signal
import statistics
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from aa_jax import guard
from aa_jax.checkpoint import is_complete, read_json, write_json_atomic, write_text_atomic
from aa_jax.errors import StorageError, UserError, check_writable, storage_error
from aa_jax.config import TrainConfig
from aa_jax.methods import METHODS

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
RESULTS = EXPERIMENTS / "results"
SWEEPS = EXPERIMENTS / "sweeps"
WORK = REPO / "runs" / "sweeps"
PIN_ENV = "_AA_JAX_SWEEP_CPUS"  # the CPUs run_workers gives a pinned worker
COPIED = ("config.json", "metrics.jsonl", "architecture.json", "result.json")  # result last
TRANSFER_REFS = ("@transfer", "@transfer_size", "@transfer_left_out")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class Waiting(Exception):
    """A point refers to a run that has not finished yet."""


@dataclasses.dataclass
class Point:
    label: str
    settings: dict  # TrainConfig fields, references not yet resolved
    index: int  # position in the sweep's order
    cell: dict  # the grid's values at this point, the method label left out

    def key(self, *drop: str) -> tuple:
        """The point's settings without ``drop``, as something hashable."""
        return tuple(sorted((k, json.dumps(v, sort_keys=True))
                            for k, v in self.settings.items() if k not in drop))


@dataclasses.dataclass
class Sweep:
    name: str
    spec: dict
    points: list[Point]
    results: Path
    work: Path

    @classmethod
    def load(cls, path: str | Path, glue_dir: str | None = None, results: Path | None = None,
             work: Path | None = None, epochs: int | None = None) -> Sweep:
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except OSError as e:
            raise UserError(f"Cannot read the sweep {path} ({e.strerror or e}).") from None
        except ValueError as e:
            raise UserError(f"The sweep {path} is not valid JSON ({e}).") from None
        name = path.stem
        points = expand(spec, glue_dir, epochs, name)
        return cls(name, spec, points, results or RESULTS / name, work or WORK / name)

    def role(self, name: str) -> str:
        """The label that plays ``name`` in this sweep, from its ``roles`` entry:
        ``reference`` (the baseline of "tasks that learn" and of the default comparisons)
        and ``learned`` (the AA runs whose architectures ``@aa``/``@transfer`` read and
        whose switches the figures draw)."""
        roles = self.spec.get("roles")
        if not isinstance(roles, dict) or not isinstance(roles.get(name), str):
            raise UserError(f"Sweep {self.name} names no '{name}' label in its 'roles' "
                            f"entry; add e.g. \"roles\": {{\"reference\": \"baseline\", "
                            f"\"learned\": \"aa\"}}.")
        return roles[name]

    def result_dir(self, point: Point) -> Path:
        return self.results / run_name(point)

    def work_dir(self, point: Point) -> Path:
        return self.work / run_name(point)

    def done(self, point: Point) -> bool:
        return is_complete(self.result_dir(point))


def expand(spec: dict, glue_dir: str | None, epochs: int | None, name: str) -> list[Point]:
    """The sweep's points in order: each grid of ``grids`` (or the one ``grid``) in turn,
    the last key varying fastest; a point an earlier grid already has is not repeated."""
    if not isinstance(spec, dict):
        raise UserError(f"Sweep {name}: expected an object with 'base' and 'grid'.")
    grids = spec.get("grids", [spec.get("grid", {})])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise UserError(f"Sweep {name}: 'grid' must be an object and 'grids' a list of them.")
    overrides = {**spec.get("per_method", {}), **spec.get("methods", {})}
    points: dict[str, Point] = {}
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            settings = {**spec.get("base", {}), **dict(zip(keys, values))}
            label = settings.get("method", TrainConfig.method)
            settings.update(overrides.get(label, {}))
            if label not in overrides and label not in METHODS:
                raise UserError(f"Sweep {name}: unknown method {label!r}; use a method name "
                                f"or define it under 'methods'.")
            settings.setdefault("method", label)
            if glue_dir:  # relative, like the references, so configs name no machine's paths
                settings["glue_dir"] = os.path.relpath(glue_dir)
            if epochs:
                settings["epochs"] = epochs
            unknown = sorted(set(settings) - CONFIG_FIELDS)
            if unknown:
                raise UserError(f"Sweep {name}: {', '.join(unknown)} is not a training "
                                f"setting; see TrainConfig in aa_jax/train.py.")
            cell = {k: v for k, v in zip(keys, values) if k != "method"}
            point = Point(label, settings, len(points), cell)
            check_run_name(point, name)
            earlier = points.setdefault(run_name(point), point)
            if earlier.settings != settings:
                raise UserError(f"Sweep {name}: two different points would share the run "
                                f"directory {run_name(point)}; give them different labels.")
    return list(points.values())


# A run's folder name: one plain path component (no separator, no "..", no NUL, no
# leading dot), whatever a sweep file says its task, label or seed is.
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=,-]*")


def check_run_name(point: Point, sweep: str) -> None:
    """Refuses, before anything is created, a point whose run name would not be one plain
    folder name (a task or label such as ``x/../../ESC`` would write outside the sweep's
    folders)."""
    if not isinstance(point.label, str):
        raise UserError(f"Sweep {sweep}: the method label {point.label!r} is not a string.")
    try:
        name = run_name(point)
    except (TypeError, ValueError):
        name = None
    if name is None or not _RUN_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"Sweep {sweep}: the run name {name!r} (task "
                        f"{point.settings.get('task')!r}, label {point.label!r}) is not one "
                        f"plain folder name; use letters, digits, '.', '_', '+' and '-' in "
                        f"tasks and labels.")


def run_name(point: Point) -> str:
    s = {**dataclasses.asdict(TrainConfig()), **point.settings}
    size = "full" if s["train_size"] is None else s["train_size"]
    dtype = "" if s["dtype"] == "float32" else f"-{s['dtype']}"
    lr = ("" if s["learning_rate"] == TrainConfig.learning_rate
          else f"-lr{s['learning_rate']:g}")
    return f"{s['task']}-{point.label}-{size}-{s['seed']}{lr}{dtype}"


# -- references to other runs -----------------------------------------------------------

def sibling(sweep: Sweep, point: Point, label: str, seed: int | None = None) -> Point:
    """The point labelled ``label`` that shares everything else with ``point`` (but has
    seed ``seed``, where one is given)."""
    cell = dict(point.cell)
    if seed is not None and "seed" in cell:
        cell["seed"] = seed
    for other in sweep.points:
        if other.label == label and other.cell == cell and (
                seed is None or other.settings.get("seed") == seed):
            return other
    which = f"the '{label}' run of its cell" + ("" if seed is None else f" with seed {seed}")
    raise UserError(f"Sweep {sweep.name}: {run_name(point)} refers to {which}, but the grid "
                    f"has no such point.")


def random_layers(task: str, train_size, seed: int, depth: int, k: int) -> list[int]:
    """``k`` of ``depth`` layers drawn uniformly without replacement: the random-layers
    control of the AA run of (task, train size, seed). The draw's seed is derived from
    those three alone (SHA-256 of ``task/train_size/seed``), so it is the same on every
    machine and rerun, and the drawn layers are recorded in the run's config."""
    digest = hashlib.sha256(f"{task}/{train_size}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return sorted(int(i) for i in rng.choice(depth, size=k, replace=False))


def learned(run_dir: Path) -> dict:
    return read_json(run_dir / "architecture.json", "learned architecture")


def transfer_source(sweep: Sweep) -> Path:
    """The AA run whose architecture every transferred point uses (the paper's rule)."""
    entry = sweep.spec.get("transfer")
    if not isinstance(entry, dict):
        raise UserError(f"Sweep {sweep.name} uses @transfer but has no 'transfer' entry.")
    other = entry.get("sweep", sweep.name)
    if not isinstance(other, str) or not _RUN_NAME.fullmatch(other) or ".." in other:
        raise UserError(f"Sweep {sweep.name}: the transfer entry's sweep {other!r} is not the "
                        f"name of a sweep file in {SWEEPS}.")
    source = sweep if other == sweep.name else Sweep.load(
        SWEEPS / f"{other}.json", results=RESULTS / other)
    learned_label = source.role("learned")
    candidates = [p for p in source.points if p.label == learned_label
                  and p.settings.get("train_size") == entry.get("train_size", 100)
                  and p.settings.get("seed") == entry.get("seed", 42)]
    if not candidates:
        raise UserError(f"Sweep {sweep.name}: the transfer entry names no "
                        f"'{learned_label}' run of sweep {source.name}.")
    best = None
    for p in candidates:  # in the source's task order
        run = source.result_dir(p)
        if not is_complete(run):
            raise Waiting(f"{source.name}/{run.name}")
        size = len(learned(run)["selected_layers"])
        if size and (best is None or size < best[0]):
            best = (size, run)
    if best is None:
        raise UserError(f"Sweep {sweep.name}: no AA run of the transfer source selected a "
                        f"layer, so there is no architecture to transfer.")
    return best[1]


def resolve(sweep: Sweep, point: Point) -> TrainConfig:
    """The point's config with its references to other runs replaced by their values."""
    settings = dict(point.settings)
    for key, value in point.settings.items():
        if not (isinstance(value, str) and value.startswith("@")):
            continue
        if value in ("@aa", "@aa_left_out", "@random_k"):
            run = sweep.result_dir(sibling(sweep, point, sweep.role("learned")))
        elif value == "@aa_42":
            run = sweep.result_dir(sibling(sweep, point, sweep.role("learned"), seed=42))
        elif value in TRANSFER_REFS:
            run = transfer_source(sweep)
        else:
            raise UserError(f"Sweep {sweep.name}: unknown reference {value!r} in {key}.")
        if not is_complete(run):
            raise Waiting(f"{sweep.name}/{run.name}")
        arch = learned(run)
        if value in ("@aa", "@aa_42", "@transfer"):
            # Relative to where the sweep runs, so that configs name no machine's paths.
            settings[key] = os.path.relpath(run)
        elif value == "@random_k":
            settings[key] = random_layers(settings.get("task", TrainConfig.task),
                                          settings.get("train_size"), settings["seed"],
                                          arch["depth"], len(arch["selected_layers"]))
        elif value == "@transfer_size":
            settings[key] = len(arch["selected_layers"])
        else:
            settings[key] = arch["depth"] - len(arch["selected_layers"])
    config = TrainConfig(**settings)
    config.validate()
    return config


# -- running ----------------------------------------------------------------------------

def published_config(sweep: Sweep, text: str) -> str:
    """A run's config.json as the results folder keeps it: an architecture taken from a
    run in ``<repo>/experiments/results/`` is named relative to ``<repo>``, as a clone
    finds it, whichever folder the sweep ran from (training reads it relative to there)."""
    config = json.loads(text)
    arch = config.get("architecture")
    root = sweep.results.resolve().parent
    if not arch or root.name != "results" or root.parent.name != "experiments":
        return text
    where = Path(arch).resolve()
    if root not in where.parents:
        return text
    config["architecture"] = where.relative_to(root.parent.parent).as_posix()
    return json.dumps(config, indent=2) + "\n"


def published_result(sweep: Sweep, point: Point, text: str) -> dict:
    """A run's result.json as the results folder keeps it: with the label the sweep ran it
    under, and its ``code`` (the package's version) followed by the sweep's protocol
    version where the sweep states one (``"protocol_version"``), so that the aggregator
    refuses to pool runs of one sweep made before and after its protocol changed."""
    result = {**json.loads(text), "label": point.label}
    version = sweep.spec.get("protocol_version")
    if version is not None and result.get("code"):
        result["code"] = f"{result['code']}, {sweep.name} protocol {version}"
    return result


def publish(sweep: Sweep, point: Point) -> Path:
    """Copies a finished run's files into the results folder, whole or not at all: they are
    assembled in a hidden sibling folder that is then renamed into place (replacing what
    the run's folder held: a failed.json, an earlier copy)."""
    src, dst = sweep.work_dir(point), sweep.result_dir(point)
    tmp, old = (dst.with_name(f".{dst.name}.{what}") for what in ("publishing", "replaced"))
    try:
        for leftover in (tmp, old):  # of a publish that was killed (the sweep is locked)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in COPIED:
            text = (src / name).read_text()
            if name == "config.json":
                text = published_config(sweep, text)
            elif name == "result.json":  # the label the sweep ran it under
                text = json.dumps(published_result(sweep, point, text), indent=2) + "\n"
            write_text_atomic(tmp / name, text)
        if dst.exists():
            dst.rename(old)
        try:
            tmp.rename(dst)
        except BaseException:
            if old.exists() and not dst.exists():
                old.rename(dst)
            raise
    except (OSError, StorageError) as e:
        error = storage_error(dst, e)  # named after the run's folder, not the hidden one
        if error is None:
            raise
        raise error from None
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
    return dst


def record_inputs(sweep: Sweep, point: Point, backbone) -> None:
    """Figure 3's input distributions of an AA run (see rational_inputs.py); a failure
    here is reported and leaves the run as it is."""
    from rational_inputs import rational_inputs

    try:
        record = rational_inputs(sweep.work_dir(point), backbone)
    except Exception as e:  # noqa: BLE001
        print(f"    (no rational inputs for {run_name(point)}: {type(e).__name__}: {e})",
              file=sys.stderr)
        return
    for d in (sweep.work_dir(point), sweep.result_dir(point)):
        write_json_atomic(d / "rational_inputs.json", record)


def record_failure(sweep: Sweep, point: Point, error: BaseException) -> None:
    dst = sweep.result_dir(point)
    dst.mkdir(parents=True, exist_ok=True)
    write_json_atomic(dst / "failed.json", {
        "run": run_name(point), "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exception(error)[-6:],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


@contextlib.contextmanager
def publishing(sweep: Sweep) -> Iterator[None]:
    """Waits for, then holds, the sweep's publishing lock: the processes of one sweep
    (``--workers``) publish, record failures and commit one at a time, so that a commit's
    tables count exactly the runs on disk, and so in the commit."""
    sweep.work.mkdir(parents=True, exist_ok=True)
    with open(sweep.work / ".publish.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def commit_results(sweep: Sweep, points: list[Point], message: str) -> None:
    """Commits the result folders of ``points`` (a result or a failure record) with the
    tables refreshed to include them (:func:`refresh_tables`); inside :func:`publishing`."""
    git_commit([*(sweep.result_dir(p) for p in points), *refresh_tables(sweep)], message)


def refresh_tables(sweep: Sweep) -> list[Path]:
    """The sweep's TABLE.md (and the README's Results excerpt of it, if it has one)
    rewritten to include the runs finished and failed so far, so that a commit of results
    carries tables that agree with them; a failure is reported, and what was not rewritten
    is left as it was."""
    import aggregate

    try:
        return aggregate.refresh(sweep)
    except Exception as e:  # noqa: BLE001 - the run itself is kept and committed
        print(f"    (tables not refreshed: {type(e).__name__}: {' '.join(str(e).split())})",
              file=sys.stderr, flush=True)
        return []


def git_commit(paths: list[Path], message: str) -> None:
    """Commits ``paths`` only (whatever else is staged stays staged); retries on a lock."""
    rel = [str(p.relative_to(REPO)) for p in paths]
    for attempt in range(10):
        add = subprocess.run(["git", "add", "--", *rel], cwd=REPO, capture_output=True,
                             text=True)
        commit = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *rel], cwd=REPO,
            capture_output=True, text=True)
        if commit and commit.returncode == 0:
            return
        time.sleep(2 + attempt)
    print(f"    (could not commit {', '.join(rel)}; commit it by hand)", file=sys.stderr)


def shard_of(points: list[Point], shard: tuple[int, int]) -> list[Point]:
    """The points of shard ``i`` of ``n``: whole (task, train size) cells, dealt out in the
    sweep's order, so that a run and the runs it refers to (``@aa``) and a cell's seeds
    (trained together) stay in one shard."""
    i, n = shard

    def cell(p: Point) -> tuple:
        return p.settings.get("task"), p.settings.get("train_size")

    order: dict[tuple, int] = {}
    for p in points:
        order.setdefault(cell(p), len(order))
    return [p for p in points if order[cell(p)] % n == i - 1]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write i/n with 1 <= i <= n, "
                                         f"e.g. 1/2.")
    return i, n


def estimate(sweep: Sweep, points: list[Point], cpus: int | None = None
             ) -> list[tuple[Point, float | None, float | None]]:
    """Seconds per pending point, from the finished runs (any sweep) on this kind of
    device: its training time (the median of runs of the same task, size and method, else
    the same task and size, else the same task scaled by size) and its set-up and test
    evaluation (the median of the same task and size, else the same task; results older
    than ``setup_and_test_seconds`` did not record it). None where nothing measured fits.
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
                          ((s["task"], s["train_size"]), (s["task"],)) if key in other), None)
            if setup is not None:
                break
        out.append((p, train, setup))
    return out


def _measured(runs: list[tuple[dict, int]]) -> tuple[dict, dict]:
    """Training seconds per epoch (per example for a task alone) and set-up seconds of
    ``runs``, listed by (task, size, method), (task, size) and (task,)."""
    measured: dict[tuple, list[float]] = {}
    other: dict[tuple, list[float]] = {}
    for r, epochs in runs:
        per_epoch = r["train_seconds"] / epochs
        for key in ((r["task"], r["train_size"], r["method"]), (r["task"], r["train_size"]),
                    (r["task"],)):
            measured.setdefault(key, []).append(per_epoch / (r["train_size"] or 1)
                                                if len(key) == 1 else per_epoch)
        if "setup_and_test_seconds" in r:
            for key in ((r["task"], r["train_size"]), (r["task"],)):
                other.setdefault(key, []).append(r["setup_and_test_seconds"])
    return measured, other


def _train_seconds(measured: dict, s: dict) -> float | None:
    for key in ((s["task"], s["train_size"], s["method"]), (s["task"], s["train_size"])):
        if key in measured:
            return s["epochs"] * statistics.median(measured[key])
    per_example = measured.get((s["task"],))
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


def train_points(sweep: Sweep, group: list[tuple[Point, TrainConfig]], backbone,
                 together: bool) -> list[dict]:
    from aa_jax.train import train

    if together and len(group) > 1:
        from aa_jax.seeds import train_seeds

        return train_seeds([c for _, c in group], [sweep.work_dir(p) for p, _ in group],
                           progress=False, pretrained=backbone)
    return [train(c, sweep.work_dir(p), progress=False, pretrained=backbone)
            for p, c in group]


def together_group(sweep: Sweep, first: Point, config: TrainConfig, todo: list[Point],
                   failed: set) -> list[tuple[Point, TrainConfig]]:
    """``first`` and the pending points that differ from it only in seed and resolve to
    the same config apart from the seed (AdapterDrop's per-seed drop or an AA-focused
    run's per-seed architecture keep them apart)."""
    group = [(first, config)]
    for p in todo:
        if p is first or p.label != first.label or run_name(p) in failed:
            continue
        if p.key("seed") != first.key("seed") or sweep.done(p):
            continue
        try:
            c = resolve(sweep, p)
        except (Waiting, UserError):
            continue
        if dataclasses.replace(c, seed=config.seed) == config:
            group.append((p, c))
    return group


def run(sweep: Sweep, shard: tuple[int, int] = (1, 1), together: bool = False,
        commit: bool = False, worker: tuple[int, int] | None = None,
        started: float | None = None) -> int:
    """Trains and publishes the shard's pending runs; returns 1 if any failed, else 0.
    ``worker=(i, n)`` (``--pin-cpus``) takes the whole sweep instead, as worker ``i`` of
    ``n`` that share it run by run: each trains the next run that no other holds, leaves
    alone a run that another worker of the same start (``started``, a time.time()) has
    recorded as failed, and waits while another still trains a run. Raises
    :class:`aa_jax.guard.Busy` when another process runs the same sweep (shard)."""
    todo = shard_of(sweep.points, shard)
    # Before any training: a result that could not be kept is not worth computing.
    check_writable(sweep.results, "The results folder")
    check_writable(sweep.work, "The work folder")
    # One process per sweep (and shard); shards of different counts may overlap, and
    # there the runs' own locks keep each run to one process.
    name, what = ".sweep.lock", f"The sweep {sweep.name}"
    if shard != (1, 1):
        name, what = f".sweep.shard-{shard[0]}-of-{shard[1]}.lock", \
            f"Shard {shard[0]}/{shard[1]} of the sweep {sweep.name}"
    if worker is not None:
        name, what = f".sweep.worker-{worker[0]}-of-{worker[1]}.lock", \
            f"Worker {worker[0]}/{worker[1]} of the sweep {sweep.name}"
    with guard.hold(sweep.work / name, what):
        return _run_held(sweep, todo, shard, together, commit, worker, started)


WORKER_POLL = 10.0  # seconds a worker waits before it looks again at runs others hold


def _run_held(sweep: Sweep, todo: list[Point], shard: tuple[int, int], together: bool,
              commit: bool, worker: tuple[int, int] | None = None,
              started: float | None = None) -> int:
    """:func:`run`'s loop, in a sweep this process holds."""
    from aa_jax.models.loader import load_pretrained

    total, failed, busy, waiting, backbones = len(todo), set(), set(), {}, {}
    crashed: set[str] = set()  # runs this process trained and that raised (counted tried)

    def failed_by_sibling(p: Point) -> bool:
        """Recorded as failed by another worker of this start: the next start retries it."""
        record = sweep.result_dir(p) / "failed.json"
        return (worker is not None and started is not None and record.is_file()
                and record.stat().st_mtime >= started)

    while True:
        nxt = None
        for p in todo:
            name = run_name(p)
            if name in failed or name in busy or sweep.done(p):
                continue
            if failed_by_sibling(p):
                failed.add(name)
                continue
            try:
                nxt = (p, resolve(sweep, p))
                break
            except Waiting as w:
                waiting[name] = str(w)
            except UserError as e:
                with publishing(sweep):
                    if not failed_by_sibling(p):
                        print(f"{name}: {e}", file=sys.stderr)
                        record_failure(sweep, p, e)
                        if commit:
                            commit_results(sweep, [p], f"Failed: {sweep.name}/{name}")
                failed.add(name)
        if nxt is None:
            # A worker waits while another still holds a run: that run, or one waiting
            # for it, may yet be its to train (or the holder may die and leave it).
            if worker is not None and any(not sweep.done(p) for p in todo
                                          if run_name(p) in busy - failed):
                time.sleep(WORKER_POLL)
                busy.clear()
                continue
            break
        point, config = nxt
        group = together_group(sweep, point, config, todo, failed | busy) if together \
            else [nxt]
        names = [run_name(p) for p, _ in group]
        # The runs stay locked until they are published: no other process trains or
        # publishes them meanwhile.
        with contextlib.ExitStack() as held:
            try:
                for p, _ in group:
                    sweep.work_dir(p).mkdir(parents=True, exist_ok=True)
                    held.enter_context(guard.hold_run(sweep.work_dir(p)))
                # Another process may have published one between the look above and the
                # lock: it is done, not to be trained again.
                if any(sweep.done(p) for p, _ in group):
                    continue
                finished = {run_name(p) for p in todo if sweep.done(p)}
                count = len(finished) + len(crashed - finished) + len(group)
                where = (f"worker {worker[0]}/{worker[1]}: " if worker else
                         f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else "")
                print(f"[{where}{count}/{total}] {', '.join(names)}: training", flush=True)
                if config.model not in backbones:
                    backbones[config.model] = load_pretrained(config.model)
                results = train_points(sweep, group, backbones[config.model], together)
            except guard.Busy as e:  # another process trains it: not a failure
                if worker is None:  # workers sharing a sweep meet each other's runs
                    print(f"    skipped: {' '.join(str(e).split())}", file=sys.stderr,
                          flush=True)
                busy.update(names)
                continue
            except StorageError:  # no other run could be kept either
                raise
            except Exception as e:  # noqa: BLE001 - recorded and the sweep goes on
                print(f"    failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                with publishing(sweep):
                    for p, _ in group:
                        record_failure(sweep, p, e)
                        failed.add(run_name(p))
                    crashed.update(names)
                    if commit:
                        commit_results(sweep, [p for p, _ in group],
                                       f"Failed: {sweep.name}/{', '.join(names)}")
                continue
            for (p, _), result in zip(group, results):
                waiting.pop(run_name(p), None)
                with publishing(sweep):
                    dst = publish(sweep, p)
                    if p.label == sweep.role("learned"):
                        record_inputs(sweep, p, backbones[config.model])
                    test = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
                    print(f"    {dst.name}: test {test}; layers {result['selected_layers']}; "
                          f"{result['train_seconds']:.0f} s", flush=True)
                    if commit:
                        commit_results(sweep, [p], f"Results: {sweep.name}/{dst.name}")
    done = sum(sweep.done(p) for p in todo)
    still_waiting = {n: w for n, w in waiting.items() if n not in failed}
    busy -= {run_name(p) for p in todo if sweep.done(p)}
    print(f"{sweep.name}: {done} of {total} runs done"
          + (f", {len(failed)} failed (see failed.json)" if failed else "")
          + (f", {len(busy)} in training by another process" if busy else "")
          + (f", {len(still_waiting)} waiting for runs not finished here" if still_waiting
             else ""))
    for n, w in sorted(still_waiting.items()):
        print(f"    {n} waits for {w}")
    return 1 if failed else 0


def cpu_shares(n: int) -> list[list[int]]:
    """This process's CPUs dealt into ``n`` contiguous shares as equal as they can be."""
    if not hasattr(os, "sched_setaffinity"):
        raise UserError("--pin-cpus pins each worker to CPUs of its own, which this system "
                        "does not offer (Linux does); leave --pin-cpus out here.")
    cpus = sorted(os.sched_getaffinity(0))
    if n > len(cpus):
        raise UserError(f"--pin-cpus gives each worker CPUs of its own, but this process "
                        f"may use {len(cpus)} CPUs for {n} workers; ask for at most "
                        f"{len(cpus)} workers.")
    return [[int(c) for c in share] for share in np.array_split(cpus, n)]


def run_workers(args: argparse.Namespace) -> int:
    """Runs shard i/n in each of n child processes and waits for them all; a SIGTERM or
    SIGINT is passed on to them (a killed run resumes at the next start). With
    ``--pin-cpus``, child i runs on its own share of the CPUs and takes the whole sweep
    as worker i/n (:func:`run`)."""
    base = [sys.executable, str(Path(__file__).resolve()), args.sweep,
            "--together", args.together]
    for flag, value in (("--glue-dir", args.glue_dir), ("--out", args.out),
                        ("--work", args.work), ("--epochs", args.epochs)):
        if value is not None:
            base += [flag, str(value)]
    if args.commit:
        base.append("--commit")
    base.append("--worker")  # an interruption is reported once, here
    # One accelerator shared by n processes: none may take most of its memory up front.
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **os.environ}
    n = args.workers
    interrupted, children = [], []

    def stop(signum, frame):
        interrupted.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.pin_cpus:
            # Each child pins itself first thing (PIN_ENV), before it starts any thread.
            shares, started = cpu_shares(n), f"{time.time():.6f}"
            for i in range(1, n + 1):
                children.append(subprocess.Popen(
                    base + ["--worker-of", f"{i}/{n}", "--started", started],
                    env={**env, PIN_ENV: ",".join(map(str, shares[i - 1]))}))
        else:
            children += [subprocess.Popen(base + ["--shard", f"{i}/{n}"], env=env)
                         for i in range(1, n + 1)]
        codes = [child.wait() for child in children]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGINT in interrupted:
        raise KeyboardInterrupt
    # The first child that did not succeed says how the whole ended (killed: 128 + signal).
    return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)


def pin_from_environment() -> None:
    """Pins this process to the CPUs :func:`run_workers` named for it, if it did."""
    cpus = os.environ.pop(PIN_ENV, None)
    if cpus:
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])


def together_wanted(choice: str) -> bool:
    if choice == "auto":
        import jax

        return jax.default_backend() != "cpu"
    return choice == "on"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep JSON file (see experiments/sweeps/)")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--out", default=None, help="results folder "
                        "(default experiments/results/<sweep name>)")
    parser.add_argument("--work", default=None, help="where runs train "
                        "(default runs/sweeps/<sweep name>)")
    parser.add_argument("--epochs", type=int, default=None, help="override for quick checks")
    parser.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the sweep in N processes on this machine: N shards of "
                        "cells, or with --pin-cpus N workers that share it run by run")
    parser.add_argument("--pin-cpus", action="store_true",
                        help="with --workers on a machine without an accelerator: each "
                        "worker runs on its own share of the CPUs (XLA's thread pool "
                        "sizes itself to them) and takes the next run no other worker "
                        "holds, in the sweep's order, instead of a shard of cells; fewer "
                        "CPUs per run split its products differently, so its numbers "
                        "differ in rounding (result.json records its cpus)")
    parser.add_argument("--together", nargs="?", const="on", default="auto",
                        choices=("auto", "on", "off"),
                        help="train the seeds of a cell as one vmapped program where their "
                        "configs allow it; auto (the default): on a GPU or TPU, not on a "
                        "CPU, where it measured slower")
    parser.add_argument("--plan", action="store_true",
                        help="print what is left and its estimated cost, run nothing")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished run's files as it arrives, with the "
                        "sweep's TABLE.md (and the README's excerpt of it) refreshed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-of", type=parse_shard, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sweep = Sweep.load(args.sweep, args.glue_dir,
                           Path(args.out).resolve() if args.out else None,
                           Path(args.work).resolve() if args.work else None, args.epochs)
        if args.commit and REPO.resolve() not in sweep.results.resolve().parents:
            raise UserError(f"--commit commits results into this repository, but "
                            f"{sweep.results} is outside it; leave out --commit, or write "
                            f"the results under {REPO / 'experiments' / 'results'}.")
        if args.workers < 1 or (args.workers > 1 and args.shard != (1, 1)):
            raise UserError("--workers takes a count of at least 1 and splits the whole "
                            "sweep; give either --workers or --shard, not both.")
        if args.pin_cpus and args.workers < 2:
            raise UserError("--pin-cpus shares the CPUs among workers; give it with "
                            "--workers N, N at least 2.")
        if args.pin_cpus and args.together == "on":
            raise UserError("--pin-cpus trains one run at a time in each worker; leave out "
                            "--together, or leave out --pin-cpus to train seeds together.")
        if args.pin_cpus:
            args.together = "off"
        if args.plan:
            plan(sweep, shard_of(sweep.points, args.shard),
                 args.workers if args.pin_cpus else 1)
            return 0
        if args.workers > 1:
            return run_workers(args)
        return run(sweep, args.shard, together_wanted(args.together), args.commit,
                   args.worker_of, args.started)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        if not args.worker:
            print("sweep: interrupted; run the same command again to go on (finished runs "
                  "are kept, an unfinished one resumes from its last checkpoint).",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    from aa_jax.allocator import reexec_with_mimalloc
    from aa_jax.cache import enable_compilation_cache

    pin_from_environment()
    reexec_with_mimalloc(sys.argv)
    enable_compilation_cache()
    # Whole lines, one write each: the shards of --workers share one terminal or pipe, and
    # under PYTHONUNBUFFERED a print's text and its newline would be two writes.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    sys.exit(main())

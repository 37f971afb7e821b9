"""A sweep file and its points: a base config plus grids of overrides, one run per point.

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

The runner (:mod:`experiments.sweep`) and the aggregator (:mod:`experiments.aggregate`)
both read sweeps, and where their folders are (``RESULTS``, ``SWEEPS``, ``WORK``), from
this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np

from aa_jax.checkpoint import is_complete, read_json
from aa_jax.config import TrainConfig
from aa_jax.errors import UserError
from aa_jax.methods import METHODS

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
RESULTS = EXPERIMENTS / "results"
SWEEPS = EXPERIMENTS / "sweeps"
WORK = REPO / "runs" / "sweeps"
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


def named_sweep(sweep: Sweep, other, entry: str) -> Sweep:
    """The sweep that ``sweep``'s ``entry`` names (``sweep`` itself where it names itself):
    only the name of a sweep file in ``experiments/sweeps/``, never a path."""
    if not isinstance(other, str) or not _RUN_NAME.fullmatch(other) or ".." in other:
        raise UserError(f"Sweep {sweep.name}: the {entry}'s sweep {other!r} is not the "
                        f"name of a sweep file in {SWEEPS}.")
    return sweep if other == sweep.name else Sweep.load(SWEEPS / f"{other}.json",
                                                        results=RESULTS / other)


def transfer_source(sweep: Sweep) -> Path:
    """The AA run whose architecture every transferred point uses (the paper's rule)."""
    entry = sweep.spec.get("transfer")
    if not isinstance(entry, dict):
        raise UserError(f"Sweep {sweep.name} uses @transfer but has no 'transfer' entry.")
    source = named_sweep(sweep, entry.get("sweep", sweep.name), "transfer entry")
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


# -- shards -----------------------------------------------------------------------------

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

"""GLUE task registry, split loading and the low-data protocol.

Everything downstream (tokenisation, batching, metrics, training) sees a task only through
two small types defined here:

* :class:`Task` -- what the text columns are, how many labels there are (or that it is a
  regression), which metrics to report and which one selects the best checkpoint.
* :class:`Examples` -- one split as columns: ``texts`` is a tuple of one or two lists of
  ``N`` strings (segment A and optional segment B) and ``labels`` is ``int32[N]`` class
  ids in ``0..num_labels-1`` or ``float32[N]`` regression targets.

GLUE splits are read from a local folder laid out like the Hugging Face dataset repository
``nyu-mll/glue`` (``<root>/<task>/<split>-00000-of-00001.parquet``) when one is given or
named by the ``AA_JAX_GLUE_DIR`` environment variable, and from the hub otherwise. User
datasets (CSV, TSV, JSON lines or Parquet, :mod:`aa_jax.data.custom`) become a
:class:`Task` plus splits of the same shape, so a custom dataset follows exactly the same
path as a GLUE task. The files themselves are read by :mod:`aa_jax.data.readers`.

The paper's low-data protocol (:func:`make_splits`): draw ``train_size`` examples from the
training split with the run's seed, keep the first ``floor(0.75 * n)`` of them for training
and the remaining ``n - floor(0.75 * n)`` (at least one) as the dev set used for model
selection, and report on the official validation split as the test set, because GLUE's
official test labels are hidden.

Every problem with the user's data or flags is raised as :class:`aa_jax.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from aa_jax.data.readers import (
    _check_not_empty,
    _first_line,
    _read_parquet,
    _require_columns,
    _text_lists,
)
from aa_jax.data.metrics import metrics_for
from aa_jax.errors import UserError

GLUE_DIR_ENV = "AA_JAX_GLUE_DIR"
"""Environment variable naming a local GLUE folder; used when no folder is passed."""

HUB_DATASET = "nyu-mll/glue"
"""Hugging Face dataset repository the local folder layout mirrors."""

TRAIN_FRACTION = 0.75
"""Share of the sampled examples used for training; the rest is the dev set."""

MIN_TRAIN_SIZE = 4
"""Smallest sample that still leaves at least three training and one dev example."""


@dataclass(frozen=True)
class Task:
    """A sentence(-pair) classification or regression task.

    ``label_names`` is ``None`` exactly when ``is_regression``; a regression task has one
    output. ``metric_names`` are the keys :func:`aa_jax.data.metrics.compute_metrics`
    returns for this task and ``select_metric`` (one of them, higher is better) picks the
    best checkpoint on the dev set. ``train_split`` / ``test_split`` name the source
    splits of the low-data protocol (the test split is GLUE's official validation split).
    ``label_range`` optionally bounds regression targets (STS-B scores lie in 0..5), which
    catches an unlabeled split (targets -1) being used for evaluation.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    is_regression: bool
    metric_names: tuple[str, ...]
    select_metric: str
    train_split: str = "train"
    test_split: str = "validation"
    label_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"task {self.name} needs one or two text columns")
        if self.is_regression != (self.label_names is None):
            raise ValueError(f"task {self.name}: label_names must be None exactly for regression")
        if self.select_metric not in self.metric_names:
            raise ValueError(f"task {self.name}: select_metric must be one of metric_names")

    @property
    def num_labels(self) -> int:
        """Width of the model's output layer: 1 for regression, else the class count."""
        return 1 if self.label_names is None else len(self.label_names)


@dataclass(frozen=True, eq=False)
class Examples:
    """One split as columns.

    ``texts`` holds one list of ``N`` strings per text column (segment A, then the
    optional segment B); ``labels`` is ``int32[N]`` class ids or ``float32[N]``
    regression targets.
    """

    texts: tuple[list[str], ...]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if not 1 <= len(self.texts) <= 2:
            raise ValueError("Examples needs one or two text columns")
        n = len(self.labels)
        if self.labels.ndim != 1 or any(len(column) != n for column in self.texts):
            raise ValueError("Examples columns and labels must all have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """The examples at ``indices`` (in that order), as a new :class:`Examples`."""
        indices = np.asarray(indices, dtype=np.int64)
        texts = tuple([column[i] for i in indices] for column in self.texts)
        return Examples(texts=texts, labels=self.labels[indices])


def _classification(name, text_columns, label_names, metrics=("accuracy",), select="accuracy",
                    test_split="validation") -> Task:
    return Task(name=name, text_columns=text_columns, label_column="label",
                label_names=label_names, is_regression=False, metric_names=metrics,
                select_metric=select, test_split=test_split)


GLUE_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _classification("cola", ("sentence",), ("unacceptable", "acceptable"),
                        metrics=("mcc",), select="mcc"),
        _classification("sst2", ("sentence",), ("negative", "positive")),
        _classification("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                        metrics=("f1", "accuracy"), select="f1"),
        _classification("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
                        metrics=("f1", "accuracy"), select="f1"),
        Task(name="stsb", text_columns=("sentence1", "sentence2"), label_column="label",
             label_names=None, is_regression=True, metric_names=("pearson", "spearman"),
             select_metric="spearman", label_range=(0.0, 5.0)),
        _classification("mnli", ("premise", "hypothesis"),
                        ("entailment", "neutral", "contradiction"),
                        test_split="validation_matched"),
        _classification("qnli", ("question", "sentence"), ("entailment", "not_entailment")),
        _classification("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        _classification("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    )
}
"""The nine GLUE tasks, with the column names and label ids of ``nyu-mll/glue``."""


def get_task(name: str | Task) -> Task:
    """The GLUE :class:`Task` called ``name`` ("STS-B", "sst_2" and "rte" all work)."""
    if isinstance(name, Task):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise UserError(f"Unknown task {name!r}; choose one of {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]


# --------------------------------------------------------------------------------------
# GLUE splits
# --------------------------------------------------------------------------------------


def resolve_glue_dir(glue_dir: str | os.PathLike | None = None) -> Path | None:
    """The local GLUE folder to read: ``glue_dir`` if given, else ``$AA_JAX_GLUE_DIR``.

    ``None`` means "load from the Hugging Face hub".
    """
    if glue_dir is not None and str(glue_dir) != "":
        return Path(glue_dir).expanduser()
    from_env = os.environ.get(GLUE_DIR_ENV, "")
    return Path(from_env).expanduser() if from_env else None


def _glue_dir_hint(glue_dir: str | os.PathLike | None) -> str:
    """How the user chose the folder, so the fix names the knob they actually turned."""
    if glue_dir is None or str(glue_dir) == "":
        return f"set {GLUE_DIR_ENV} to"
    return "pass --glue-dir pointing at"


def glue_split_path(root: Path, task: Task, split: str) -> Path:
    """Where ``split`` of ``task`` lives in a folder laid out like ``nyu-mll/glue``."""
    return root / task.name / f"{split}-00000-of-00001.parquet"


def _local_glue_table(root: Path, task: Task, split: str, hint: str) -> tuple[pa.Table, str]:
    fix = f"{hint} a folder laid out like {HUB_DATASET} (one sub-folder per task)."
    if not root.is_dir():
        raise UserError(f"GLUE folder {root} does not exist; {fix}")
    if not (root / task.name).is_dir():
        raise UserError(f"GLUE folder {root} has no {task.name} sub-folder; {fix}")
    path = glue_split_path(root, task, split)
    if not path.is_file():
        raise UserError(f"GLUE folder {path.parent} has no {path.name}; {fix}")
    what = f"{task.name} {split} split ({path})"
    return _read_parquet(path, [*task.text_columns, task.label_column], what), what


def _hub_glue_table(task: Task, split: str) -> tuple[pa.Table, str]:
    """Load a split with ``datasets.load_dataset`` and return it as an Arrow table."""
    what = f"{HUB_DATASET} {task.name} {split} split"
    try:
        import datasets

        dataset = datasets.load_dataset(HUB_DATASET, task.name, split=split)
        table = dataset.with_format("arrow")[:]
    except Exception as error:  # network, cache and unknown-split errors all land here
        raise UserError(f"Could not load the {what} from the Hugging Face hub "
                        f"({_first_line(error)}); connect to the internet or set "
                        f"{GLUE_DIR_ENV} to a local copy laid out like {HUB_DATASET}.") from error
    _require_columns(table.column_names, [*task.text_columns, task.label_column], what)
    return table, what


def load_split(task: str | Task, split: str, glue_dir: str | os.PathLike | None = None,
               *, require_labels: bool = True) -> Examples:
    """Load one split of a GLUE task as :class:`Examples`.

    Reads ``<glue_dir>/<task>/<split>-00000-of-00001.parquet`` when ``glue_dir`` is given
    or ``$AA_JAX_GLUE_DIR`` is set, else ``datasets.load_dataset("nyu-mll/glue", task,
    split=split)``. With ``require_labels`` (the default) every label must be a valid
    class id (or a finite target inside ``task.label_range``), which rejects GLUE's
    unlabeled test splits (label -1); pass ``False`` to load those as they are.
    """
    task = get_task(task)
    root = resolve_glue_dir(glue_dir)
    if root is None:
        table, what = _hub_glue_table(task, split)
    else:
        table, what = _local_glue_table(root, task, split, _glue_dir_hint(glue_dir))
    _check_not_empty(table, what)
    texts = _text_lists(table, task.text_columns, what)
    labels = _glue_labels(table.column(task.label_column), task, what, require_labels)
    return Examples(texts=texts, labels=labels)


def _glue_labels(column: pa.ChunkedArray, task: Task, what: str,
                 require_labels: bool) -> np.ndarray:
    """Label column -> ``float32[N]`` targets or ``int32[N]`` class ids, validated."""
    if column.null_count:
        raise UserError(f"{what} has {column.null_count} missing label(s); drop those rows "
                        f"or fill in their labels.")
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise UserError(f"{what} label column {task.label_column} holds {column.type}, not "
                        f"numbers; use the numeric label ids of {HUB_DATASET}.")
    # Through Python numbers: pyarrow's conversion to NumPy imports pandas, which takes
    # longer than converting even MNLI's 393k labels this way.
    kind = (np.float64 if pa.types.is_floating(column.type) else
            np.uint64 if pa.types.is_unsigned_integer(column.type) else np.int64)
    values = np.array(column.to_pylist(), dtype=kind)
    if task.is_regression:
        labels = values.astype(np.float32)
        if require_labels:
            _check_targets(labels, task, what)
        return labels
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise UserError(f"{what} has non-integer class labels; {task.name} needs class ids "
                        f"0..{task.num_labels - 1}.")
    if require_labels:
        outside = np.unique(values[(values < 0) | (values >= task.num_labels)])
        if outside.size:
            shown = ", ".join(str(int(v)) for v in outside[:5])
            raise UserError(f"{what} has labels {shown} outside {task.name}'s class ids "
                            f"0..{task.num_labels - 1} ({', '.join(task.label_names)}); use a "
                            f"labeled split (GLUE test splits are unlabeled, label -1) or fix "
                            f"the label column.")
    return values.astype(np.int32)


def _check_targets(labels: np.ndarray, task: Task, what: str) -> None:
    bad = int(np.sum(~np.isfinite(labels)))
    if bad:
        raise UserError(f"{what} has {bad} NaN or infinite regression target(s); drop those "
                        f"rows or fill in their targets.")
    if task.label_range is not None:
        low, high = task.label_range
        outside = (labels < low) | (labels > high)
        if np.any(outside):
            raise UserError(f"{what} has {int(outside.sum())} target(s) outside {task.name}'s "
                            f"range {low:g}..{high:g} (e.g. {float(labels[outside][0]):g}); use "
                            f"a labeled split (GLUE test splits are unlabeled, label -1).")


# --------------------------------------------------------------------------------------
# Low-data protocol
# --------------------------------------------------------------------------------------


def split_train_dev(task: Task, pool: Examples, train_size: int | None,
                    seed: int) -> tuple[Examples, Examples]:
    """Sample ``train_size`` examples of ``pool`` with ``seed`` and cut them 75% / 25%.

    The sample is the first ``n`` entries of ``np.random.default_rng(seed).permutation``
    over the pool (``n = len(pool)`` when ``train_size`` is None), so it is reproducible
    and differs across seeds. Training gets the first ``floor(0.75 * n)`` sampled
    examples and the dev set the remaining ``n - floor(0.75 * n)``; ``n >= 4`` keeps
    both non-empty.
    """
    available = len(pool)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed!r} is not a non-negative integer; pass e.g. --seed 0.")
    if train_size is None:
        n = available
        if n < MIN_TRAIN_SIZE:
            raise UserError(f"{task.name}'s training split has only {n} example(s); the "
                            f"75/25 train/dev protocol needs at least {MIN_TRAIN_SIZE}.")
    else:
        if isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)):
            raise UserError(f"--train-size {train_size!r} is not a whole number; pass a "
                            f"count of examples or omit it for the full set.")
        n = int(train_size)
        if n < MIN_TRAIN_SIZE:
            raise UserError(f"--train-size {n} is too small to give both a training and a dev "
                            f"set; use at least {MIN_TRAIN_SIZE}.")
        if n > available:
            raise UserError(f"--train-size {n} is larger than {task.name}'s training split "
                            f"({available} examples); use at most {available} or omit it "
                            f"for the full set.")
    order = np.random.default_rng(int(seed)).permutation(available)[:n]
    n_train = math.floor(TRAIN_FRACTION * n)
    return pool.take(order[:n_train]), pool.take(order[n_train:])


def make_splits(task: str | Task, train_size: int | None, seed: int,
                glue_dir: str | os.PathLike | None = None) -> dict[str, Examples]:
    """The paper's low-data splits of a GLUE task: ``{"train", "dev", "test"}``.

    ``train`` / ``dev`` come from :func:`split_train_dev` over ``task.train_split``;
    ``test`` is ``task.test_split``, GLUE's official validation split (MNLI:
    ``validation_matched``). ``train_size=None`` uses the whole training split.
    """
    task = get_task(task)
    pool = load_split(task, task.train_split, glue_dir)
    train, dev = split_train_dev(task, pool, train_size, seed)
    test = load_split(task, task.test_split, glue_dir)
    return {"train": train, "dev": dev, "test": test}


# --------------------------------------------------------------------------------------
# User datasets
# --------------------------------------------------------------------------------------


def with_metric(task: Task, metric: str | None) -> Task:
    """``task`` reporting ``metric`` too and selecting the best epoch by it (``None``: the
    task's own). Regression takes pearson or spearman; classification accuracy or mcc,
    and f1 (of class 1) with two classes."""
    if metric is None:
        return task
    allowed = metrics_for(task.is_regression, task.num_labels)
    if metric not in allowed:
        kind = ("a regression" if task.is_regression else
                f"a {task.num_labels}-class classification")
        raise UserError(f"--metric {metric} does not fit {task.name}, {kind} task; choose "
                        f"{', '.join(allowed)}.")
    names = tuple(dict.fromkeys((*task.metric_names, metric)))
    return dataclasses.replace(task, metric_names=names, select_metric=metric)

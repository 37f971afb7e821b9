"""The user's own data (``--data``): files or a dataset folder or Hub id as a
:class:`~aa_jax.data.glue.Task` plus train, dev and test splits.

Files (CSV, TSV, JSON lines, JSON or Parquet) are read by :mod:`aa_jax.data.readers`; a
dataset folder or Hub id by ``datasets``. The splits then follow GLUE's low-data protocol
(:func:`aa_jax.data.glue.split_train_dev`) unless the data brings its own dev split. Every
problem with the data is a :class:`aa_jax.errors.UserError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from aa_jax.data.glue import Examples, Task, _check_targets, split_train_dev
from aa_jax.data.readers import (
    _check_not_empty,
    _first_line,
    _read_user_file,
    _require_columns,
    _text_lists,
)
from aa_jax.errors import UserError


def load_custom(sources: Sequence[str | os.PathLike], text_columns: Sequence[str],
                label_column: str, *, task_name: str = "custom", regression: bool | None = None,
                train_size: int | None = None, seed: int = 0, data_config: str | None = None,
                splits: Mapping[str, str | None] | None = None
                ) -> tuple[Task, dict[str, Examples]]:
    """A user dataset as a :class:`Task` plus ``{"train", "dev", "test"}`` splits.

    ``sources`` is ``[train_file, test_file]`` or ``[train_file, test_file, dev_file]``
    (``.csv``, ``.tsv``, ``.jsonl``, ``.json`` or ``.parquet``), or one name that is not a
    file: a dataset folder or Hub id that ``datasets.load_dataset(name, data_config)``
    reads, whose splits ``splits`` names (``{"train": ..., "test": ..., "dev": ...}``;
    by default train and test, no dev). Without a dev split, the training data goes
    through the same 75/25 protocol as GLUE (:func:`split_train_dev`); with one, the
    dev split is used as it is and ``train_size`` examples of the training data are
    sampled for training. ``regression=None`` infers a regression task when the labels
    are numbers that are not all whole. Classification labels become ids ``0..K-1``: a
    dataset's own class names where its label column declares them, else the distinct
    training labels in sorted order. The task reports accuracy (also the selection
    metric), a regression task Pearson and Spearman (selection by Spearman); see
    :func:`aa_jax.data.glue.with_metric`.
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2 or len(set(text_columns)) != len(text_columns):
        raise UserError(f"Got text columns {list(text_columns)}; name one text column, or two "
                        f"distinct ones for sentence pairs.")
    if label_column in text_columns:
        raise UserError(f"Column {label_column} is named both as text and as label; name a "
                        f"separate label column.")
    tables, whats, class_names = _custom_tables(list(sources), text_columns, label_column,
                                                data_config, dict(splits or {}))
    names = list(tables)  # train, test (, dev)
    for name in names:
        _check_not_empty(tables[name], whats[name])
    raw = {name: _plain_labels(tables[name].column(label_column), whats[name])
           for name in names}

    if regression is None:
        regression = class_names is None and all(_is_number(v) for v in raw["train"]) and \
            not all(float(v).is_integer() for v in raw["train"])
    if regression:
        task = Task(name=task_name, text_columns=text_columns, label_column=label_column,
                    label_names=None, is_regression=True, metric_names=("pearson", "spearman"),
                    select_metric="spearman")
        labels = {name: _regression_targets(raw[name], task, whats[name]) for name in names}
    else:
        if class_names is not None:
            ids = {i: i for i in range(len(class_names))}
        else:
            class_names = _sorted_classes(raw["train"], whats["train"])
            ids = {name: i for i, name in enumerate(class_names)}
        task = Task(name=task_name, text_columns=text_columns, label_column=label_column,
                    label_names=tuple(str(name) for name in class_names), is_regression=False,
                    metric_names=("accuracy",), select_metric="accuracy")
        _check_label_kinds(raw, whats)
        labels = {name: _class_ids(raw[name], ids, whats[name]) for name in names}

    examples = {name: Examples(texts=_text_lists(tables[name], text_columns, whats[name]),
                               labels=labels[name]) for name in names}
    if "dev" in examples:
        train = examples["train"]
        if train_size is not None:
            if train_size > len(train):
                raise UserError(f"--train-size {train_size} is larger than {whats['train']} "
                                f"({len(train)} examples); use at most {len(train)} or omit "
                                f"it for the full set.")
            train = train.take(np.random.default_rng(int(seed)).permutation(
                len(train))[:train_size])
        return task, {"train": train, "dev": examples["dev"], "test": examples["test"]}
    train, dev = split_train_dev(task, examples["train"], train_size, seed)
    return task, {"train": train, "dev": dev, "test": examples["test"]}


def is_dataset_name(sources: Sequence[str | os.PathLike]) -> bool:
    """Whether ``--data`` names a dataset (a folder or Hub id) rather than files."""
    return len(sources) == 1 and not Path(sources[0]).expanduser().is_file()


def _custom_tables(sources: list, text_columns: tuple[str, ...], label_column: str,
                   data_config: str | None, splits: dict[str, str | None]):
    """({split: table}, {split: what}, class names or None) of the user's data."""
    columns = [*text_columns, label_column]
    if is_dataset_name(sources):
        return _dataset_tables(str(sources[0]), columns, data_config, splits)
    if len(sources) not in (2, 3):
        raise UserError(f"Got {len(sources)} data file(s); pass the training file then the "
                        f"test file (then, optionally, a dev file), or one dataset folder or "
                        f"Hub id.")
    if data_config is not None or splits.get("dev") or \
            (splits.get("train") or "train", splits.get("test") or "test") != ("train", "test"):
        raise UserError("--data-config and --split-* go with a dataset folder or Hub id, not "
                        "with data files; leave them out.")
    paths = [Path(f).expanduser() for f in sources]
    names = ["train", "test", "dev"][:len(paths)]
    whats = {name: f"{'training' if name == 'train' else name} file {path}"
             for name, path in zip(names, paths)}
    tables = {name: _read_user_file(path, text_columns, label_column)
              for name, path in zip(names, paths)}
    return tables, whats, None


def _dataset_tables(source: str, columns: list[str], data_config: str | None,
                    splits: dict[str, str | None]):
    """The splits of a dataset folder or Hub id, read with ``datasets``."""
    wanted = {"train": splits.get("train") or "train", "test": splits.get("test") or "test"}
    if splits.get("dev"):
        wanted["dev"] = splits["dev"]
    label = columns[-1]
    try:
        import datasets

        loaded = datasets.load_dataset(source, data_config)
    except Exception as error:  # network, missing folder or repo, bad config
        path = Path(source).expanduser()
        hint = ("check the path" if source.startswith((".", "/", "~")) or path.exists()
                else "check the id (and --data-config), or download it to a folder")
        raise UserError(f"Could not load dataset {source!r} ({_first_line(error)}); {hint}.") \
            from None
    tables, whats, class_names = {}, {}, None
    for name, split in wanted.items():
        what = f"the {split} split of dataset {source}"
        if split not in loaded:
            raise UserError(f"Dataset {source} has no split {split!r} (it has "
                            f"{', '.join(loaded)}); choose one with --split-{name}.")
        table = loaded[split].with_format("arrow")[:]
        _require_columns(table.column_names, columns, what)
        tables[name], whats[name] = table.select(columns), what
        feature = loaded[split].features.get(label)
        if name == "train" and isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
    return tables, whats, class_names


def _plain_labels(column: pa.ChunkedArray, what: str) -> list:
    if column.null_count:
        raise UserError(f"{what} has {column.null_count} missing label(s); drop those rows or "
                        f"fill in their labels.")
    values = column.to_pylist()
    if not all(isinstance(v, (str, int, float, bool)) for v in values):
        raise UserError(f"{what} has labels that are not strings or numbers; give each "
                        f"example a single string or number label.")
    return values


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _regression_targets(values: list, task: Task, what: str) -> np.ndarray:
    if not all(_is_number(v) for v in values):
        raise UserError(f"{what} has non-numeric labels but the task is a regression; use "
                        f"numeric targets or treat it as classification.")
    targets = np.asarray(values, dtype=np.float32)
    _check_targets(targets, task, what)
    return targets


def _sorted_classes(values: list, what: str) -> list:
    distinct = set(values)
    if any(isinstance(v, float) and math.isnan(v) for v in distinct):
        raise UserError(f"{what} has NaN labels; drop those rows or fill in their labels.")
    try:
        names = sorted(distinct)
    except TypeError as error:
        raise UserError(f"{what} mixes string and numeric labels; use one kind of label "
                        f"throughout.") from error
    if len(names) < 2:
        raise UserError(f"{what} has only one distinct label ({names[0]!r}); a classification "
                        f"task needs at least two.")
    return names


def _label_kind(values: list) -> str | None:
    if all(isinstance(v, str) for v in values):
        return "text"
    if all(_is_number(v) or isinstance(v, bool) for v in values):
        return "numbers"
    return None  # mixed: _sorted_classes and _class_ids say what is wrong


def _check_label_kinds(raw: dict[str, list], whats: dict[str, str]) -> None:
    """Classification labels written as numbers in one file and as text in another (``1``
    against ``"1"``) are named as such, not as labels that never occur in training."""
    train = _label_kind(raw["train"])
    for name, values in raw.items():
        kind = _label_kind(values)
        if name != "train" and values and None not in (train, kind) and kind != train:
            first, other = (w if w.startswith("the ") else f"the {w}"
                            for w in (whats["train"], whats[name]))
            raise UserError(f"{first[0].upper()}{first[1:]} stores its labels as {train} but "
                            f"{other} as {kind}; write them the same way in every file.")


def _class_ids(values: list, ids: Mapping, what: str) -> np.ndarray:
    unknown = sorted({str(v) for v in values if v not in ids})
    if unknown:
        raise UserError(f"{what} has label(s) {', '.join(unknown[:5])} that never occur in the "
                        f"training file; use only labels present in the training data.")
    return np.asarray([ids[v] for v in values], dtype=np.int32)

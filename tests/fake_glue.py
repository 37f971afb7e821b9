"""Write small made-up GLUE tasks in the ``nyu-mll/glue`` Parquet layout, for tests.

``write_fake_glue(root)`` creates ``root/<task>/<split>-00000-of-00001.parquet`` with the
real column names and dtypes (text ``string``, ``label`` ``int64`` or STS-B ``float32``,
``idx`` ``int32``) and the ``huggingface`` schema metadata that names the classes, so the
files load through :func:`aa_jax.data.load_split` and through ``datasets`` like the real
ones. Sentences are short and English-like from a small vocabulary, and each class (or
STS-B score range) adds its own cue word, so a tiny model can learn something in an
end-to-end run. As in GLUE, test splits are unlabeled (-1) except MRPC's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aa_jax.data.glue import GLUE_TASKS, Task

SUBJECTS = ("the cat", "a dog", "my friend", "the teacher", "a child", "the old man",
            "our team", "the bird", "a student", "the farmer")
VERBS = ("sees", "likes", "finds", "takes", "reads", "builds", "helps", "watches", "paints",
         "carries")
OBJECTS = ("the ball", "a book", "the house", "a small box", "the river", "a red car",
           "the garden", "a letter", "the window", "an apple")
ENDINGS = ("today", "in the park", "after lunch", "at night", "with care", "again",
           "near the school", "every day")
CUES = ("never", "always", "rarely")
"""Cue word per class id (or per third of the STS-B score range)."""


def _sentence(rng: np.random.Generator, cue: str | None) -> str:
    words = [SUBJECTS[rng.integers(len(SUBJECTS))]]
    if cue is not None:
        words.append(cue)
    words.append(VERBS[rng.integers(len(VERBS))])
    words.append(OBJECTS[rng.integers(len(OBJECTS))])
    if rng.random() < 0.5:
        words.append(ENDINGS[rng.integers(len(ENDINGS))])
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _labels(task: Task, n: int, labeled: bool, rng: np.random.Generator) -> np.ndarray:
    if task.is_regression:
        if not labeled:
            return np.full(n, -1.0, dtype=np.float32)
        return np.round(rng.uniform(0.0, 5.0, size=n) * 5) / 5  # steps of 0.2, like STS-B
    if not labeled:
        return np.full(n, -1, dtype=np.int64)
    return rng.integers(task.num_labels, size=n).astype(np.int64)


def _cue(task: Task, label: float) -> str | None:
    if label < 0:
        return None
    if task.is_regression:
        return CUES[min(int(label / 5.0 * 3), 2)]
    return CUES[int(label) % len(CUES)]


def _schema(task: Task) -> pa.Schema:
    features = {column: {"dtype": "string", "_type": "Value"} for column in task.text_columns}
    if task.is_regression:
        features[task.label_column] = {"dtype": "float32", "_type": "Value"}
        label_type = pa.float32()
    else:
        features[task.label_column] = {"names": list(task.label_names), "_type": "ClassLabel"}
        label_type = pa.int64()
    features["idx"] = {"dtype": "int32", "_type": "Value"}
    fields = [pa.field(column, pa.string()) for column in task.text_columns]
    fields += [pa.field(task.label_column, label_type), pa.field("idx", pa.int32())]
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema(fields, metadata=metadata)


def _official_test_split(task: Task) -> str:
    return "test_matched" if task.test_split == "validation_matched" else "test"


def write_split(root: str | Path, task: str | Task, split: str, n: int, *, labeled: bool = True,
                seed: int = 0) -> Path:
    """Write ``n`` made-up examples as ``root/<task>/<split>-00000-of-00001.parquet``."""
    task = task if isinstance(task, Task) else GLUE_TASKS[task]
    rng = np.random.default_rng(seed)
    labels = _labels(task, n, labeled, rng)
    columns: dict[str, list] = {column: [] for column in task.text_columns}
    for label in labels:
        cue = _cue(task, float(label))
        for j, column in enumerate(task.text_columns):
            columns[column].append(_sentence(rng, cue if j == len(task.text_columns) - 1 else None))
    columns[task.label_column] = labels.tolist()
    columns["idx"] = list(range(n))
    path = Path(root) / task.name / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=_schema(task)), path)
    return path


def write_fake_glue(root: str | Path, tasks: Sequence[str] = ("rte", "stsb", "cola"),
                    n_train: int = 64, n_validation: int = 32, seed: int = 0) -> Path:
    """Write train, test-protocol and official-test splits of ``tasks`` under ``root``.

    Each task gets ``train`` (``n_train`` rows), its test-protocol split (``validation``;
    MNLI ``validation_matched``, ``n_validation`` rows) and an official test split of
    ``n_validation`` rows (unlabeled except MRPC). Returns ``root`` as a Path, ready to
    pass as ``glue_dir`` or ``--glue-dir``.
    """
    root = Path(root)
    for k, name in enumerate(tasks):
        task = GLUE_TASKS[name]
        base = seed * 1000 + 10 * k
        write_split(root, task, task.train_split, n_train, seed=base)
        write_split(root, task, task.test_split, n_validation, seed=base + 1)
        write_split(root, task, _official_test_split(task), n_validation,
                    labeled=task.name == "mrpc", seed=base + 2)
    return root

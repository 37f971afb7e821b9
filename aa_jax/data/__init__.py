"""Data for GLUE-style tasks: registry and loading, tokenised batches, and metrics.

* :mod:`aa_jax.data.glue` -- :class:`Task`, :class:`Examples`, GLUE tasks and the
  low-data train/dev/test protocol;
* :mod:`aa_jax.data.custom` -- the user's own data as a task and splits;
* :mod:`aa_jax.data.readers` -- CSV, TSV, JSON-lines and Parquet files read as Arrow
  tables, with one-sentence errors;
* :mod:`aa_jax.data.pipeline` -- tokenisation and fixed-shape, length-bucketed batches;
* :mod:`aa_jax.data.metrics` -- accuracy, F1, MCC, Pearson and Spearman per task.
"""

from aa_jax.data.glue import (
    GLUE_DIR_ENV,
    GLUE_TASKS,
    Examples,
    Task,
    get_task,
    load_split,
    make_splits,
    resolve_glue_dir,
    split_train_dev,
)
from aa_jax.data.custom import load_custom
from aa_jax.data.metrics import METRICS, compute_metrics
from aa_jax.data.pipeline import (
    Encoded,
    batches,
    bucket_length,
    default_buckets,
    encode,
    in_dataset_order,
    length_order,
    num_batches,
)

__all__ = [
    "GLUE_DIR_ENV",
    "GLUE_TASKS",
    "METRICS",
    "Encoded",
    "Examples",
    "Task",
    "batches",
    "bucket_length",
    "compute_metrics",
    "default_buckets",
    "encode",
    "get_task",
    "in_dataset_order",
    "length_order",
    "load_custom",
    "load_split",
    "make_splits",
    "num_batches",
    "resolve_glue_dir",
    "split_train_dev",
]

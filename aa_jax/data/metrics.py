"""GLUE evaluation metrics in plain numpy, with padding examples masked out.

Batches are padded to a fixed size with weight-0 examples (see
:mod:`aa_jax.data.pipeline`), so every metric takes an optional ``weights[N]`` and keeps
only the examples whose weight is non-zero. Values are fractions (0.75, not 75.0) returned
as Python floats so they serialise to JSON directly.

Degenerate inputs give 0.0 instead of NaN: Matthews correlation when the predictions (or
the labels) are all one class, Pearson and Spearman when either side is constant, and F1
when there are neither predicted nor true positives. Early in training a model often
predicts a single class; 0.0 ("no better than chance") keeps model selection and result
tables well defined, and matches scikit-learn's conventions for MCC and F1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from aa_jax.data.glue import Task


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``predictions[N]`` equal to ``labels[N]`` (class ids)."""
    return float(np.mean(predictions == labels))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    true_pos = float(np.sum((predictions == 1) & (labels == 1)))
    denominator = float(np.sum(predictions == 1) + np.sum(labels == 1))
    return 0.0 if denominator == 0 else 2.0 * true_pos / denominator


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class form, equal to the usual one for two classes)."""
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k, n = len(classes), len(labels)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (codes[:n], codes[n:]), 1.0)
    true_totals, pred_totals = confusion.sum(axis=1), confusion.sum(axis=0)
    samples, correct = float(n), float(np.trace(confusion))
    cov_yp = correct * samples - float(true_totals @ pred_totals)
    cov_pp = samples**2 - float(pred_totals @ pred_totals)
    cov_yy = samples**2 - float(true_totals @ true_totals)
    if cov_pp == 0.0 or cov_yy == 0.0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_pp * cov_yy))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of two ``float[N]`` vectors; 0.0 if either is constant."""
    x = predictions.astype(np.float64) - np.mean(predictions, dtype=np.float64)
    y = labels.astype(np.float64) - np.mean(labels, dtype=np.float64)
    norm = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    if norm == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / norm, -1.0, 1.0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values[N]``; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.append(starts[1:], len(values))  # one past each run of equal values
    run_ranks = (starts + ends + 1) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman correlation: Pearson of the ranks, ties sharing their average rank."""
    return pearson(average_ranks(predictions), average_ranks(labels))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
"""Every metric a :class:`~aa_jax.data.glue.Task` may name in ``metric_names``."""


def compute_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray,
                    weights: np.ndarray | None = None) -> dict[str, float]:
    """``{name: value}`` for each of ``task.metric_names``.

    ``predictions`` are class ids ``[N]`` or logits ``[N, K]`` (arg-maxed) for
    classification, and scores ``[N]`` or ``[N, 1]`` for regression; ``labels`` is
    ``[N]``. Examples with ``weights[i] == 0`` are padding and are left out.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    if task.is_regression:
        predictions = predictions.reshape(len(predictions), -1)
        if predictions.shape[1] != 1:
            raise ValueError(f"regression predictions must be [N] or [N, 1], "
                             f"got {predictions.shape}")
        predictions = predictions[:, 0].astype(np.float64)
        labels = labels.astype(np.float64)
    elif predictions.ndim == 2:
        predictions = np.argmax(predictions, axis=-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} disagree")
    if weights is not None:
        keep = np.asarray(weights).reshape(-1) != 0
        if keep.shape != labels.shape:
            raise ValueError(f"weights {keep.shape} and labels {labels.shape} disagree")
        predictions, labels = predictions[keep], labels[keep]
    if labels.size == 0:
        raise ValueError("no examples to score (all weights are zero)")
    return {name: METRICS[name](predictions, labels) for name in task.metric_names}


def majority_class_scores(task: Task, labels: np.ndarray) -> dict[str, float]:
    """The scores of the best one-answer predictor: the most frequent class of ``labels``
    for every example (classification), or a constant score, which correlates with
    nothing (regression: 0 for both correlations). A run that learns only the label prior
    scores about this."""
    labels = np.asarray(labels).reshape(-1)
    if task.is_regression:
        return {name: 0.0 for name in task.metric_names}
    values, counts = np.unique(labels, return_counts=True)
    constant = np.full_like(labels, values[np.argmax(counts)])
    return compute_metrics(task, constant, labels)

"""GLUE evaluation metrics from scikit-learn and scipy, with padding examples masked out.

Accuracy is counted with NumPy (the count of matches over N, in float64: exact, and the
float scikit-learn's ``accuracy_score`` returns), so that a run on an accuracy task never
imports scikit-learn or scipy.stats; the other metrics import them when first called.

Batches are padded to a fixed size with weight-0 examples (see
:mod:`aa_jax.data.pipeline`), so every metric takes an optional ``weights[N]`` and keeps
only the examples whose weight is non-zero. Values are fractions (0.75, not 75.0) returned
as Python floats so they serialise to JSON directly.

Degenerate inputs give 0.0 instead of NaN: Matthews correlation when the predictions (or
the labels) are all one class, Pearson and Spearman when either side is constant, and F1
when there are neither predicted nor true positives. Early in training a model often
predicts a single class; 0.0 ("no better than chance") keeps model selection and result
tables well defined (scikit-learn's own convention for MCC and, with ``zero_division=0``,
F1; scipy's correlations would be NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np



def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``predictions[N]`` equal to ``labels[N]`` (class ids)."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    from sklearn import metrics as sk

    return float(sk.f1_score(labels == 1, predictions == 1, zero_division=0.0))


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multi-class form, equal to the usual one for two classes)."""
    from sklearn import metrics as sk

    return float(sk.matthews_corrcoef(labels, predictions))


def _correlation(statistic, predictions: np.ndarray, labels: np.ndarray) -> float:
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(np.clip(statistic(predictions, labels).statistic, -1.0, 1.0))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of two ``float[N]`` vectors; 0.0 if either is constant."""
    from scipy import stats

    return _correlation(stats.pearsonr, predictions.astype(np.float64),
                        labels.astype(np.float64))


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman correlation: Pearson of the ranks, ties sharing their average rank."""
    from scipy import stats

    return _correlation(stats.spearmanr, predictions.astype(np.float64),
                        labels.astype(np.float64))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}
"""Every metric a :class:`~aa_jax.data.glue.Task` may name in ``metric_names``; the one
table that ``--metric``'s choices and each task's allowed metrics derive from."""
# Which tasks each metric fits: "regression", "classification", or "binary" (two classes).
METRIC_FITS = {"accuracy": "classification", "f1": "binary", "mcc": "classification",
               "pearson": "regression", "spearman": "regression"}


def metrics_for(is_regression: bool, num_labels: int) -> tuple[str, ...]:
    """The metrics that fit a task (``METRIC_FITS``), in ``METRICS``' order."""
    fits = {"regression"} if is_regression else (
        {"classification", "binary"} if num_labels == 2 else {"classification"})
    return tuple(name for name in METRICS if METRIC_FITS[name] in fits)


def compute_metrics(task, predictions: np.ndarray, labels: np.ndarray,
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


def majority_class_scores(task, labels: np.ndarray) -> dict[str, float]:
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

"""Tests for the GLUE metrics (scikit-learn and SciPy): agreement with the closed-form
definitions aa_jax computed by hand before (kept here as the reference), masking of
padding examples, degenerate inputs, and the task-to-metric mapping."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from aa_jax.data import GLUE_TASKS, METRICS, compute_metrics


# -- the closed-form definitions (aa_jax's own implementation before it used the libraries)

def old_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``predictions[N]`` equal to ``labels[N]`` (class ids)."""
    return float(np.mean(predictions == labels))


def old_f1_binary(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate")."""
    true_pos = float(np.sum((predictions == 1) & (labels == 1)))
    denominator = float(np.sum(predictions == 1) + np.sum(labels == 1))
    return 0.0 if denominator == 0 else 2.0 * true_pos / denominator


def old_matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
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


def old_pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of two ``float[N]`` vectors; 0.0 if either is constant."""
    x = predictions.astype(np.float64) - np.mean(predictions, dtype=np.float64)
    y = labels.astype(np.float64) - np.mean(labels, dtype=np.float64)
    norm = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    if norm == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / norm, -1.0, 1.0))


def old_average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values[N]``; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.append(starts[1:], len(values))  # one past each run of equal values
    run_ranks = (starts + ends + 1) / 2.0  # mean of the ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def old_spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman correlation: Pearson of the ranks, ties sharing their average rank."""
    return old_pearson(old_average_ranks(predictions), old_average_ranks(labels))


OLD = {"accuracy": old_accuracy, "f1": old_f1_binary, "mcc": old_matthews_corrcoef,
       "pearson": old_pearson, "spearman": old_spearman}
# float64 sums in another order: a few ulps of values of size <= 1.
EXACT = 1e-12


@pytest.mark.parametrize("seed", range(20))
def test_metrics_equal_the_closed_form_definitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    k = int(rng.integers(2, 4))
    labels = rng.integers(0, k, size=n)
    predictions = np.where(rng.random(n) < rng.random(), labels, rng.integers(0, k, size=n))
    if seed % 5 == 0:
        predictions[:] = predictions[0]  # degenerate: one class predicted
    for name in ("accuracy", "mcc") + (("f1",) if k == 2 else ()):
        assert METRICS[name](predictions, labels) == pytest.approx(
            OLD[name](predictions, labels), abs=EXACT), name
    scores = np.round(rng.uniform(0, 5, n) * 5) / 5  # ties, like STS-B
    guess = scores + rng.normal(0, rng.uniform(0.1, 3), n)
    guess[: n // 4] = 2.0  # tied predictions too
    if seed % 5 == 1:
        guess[:] = 1.0  # degenerate: constant predictions
    for name in ("pearson", "spearman"):
        assert METRICS[name](guess, scores) == pytest.approx(OLD[name](guess, scores),
                                                             abs=EXACT), name


def test_metrics_on_hand_computed_examples():
    """GLUE's definitions on small cases worked out by hand."""
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([1, 0, 0, 1, 1])  # tp 2, fp 1, fn 1, tn 1
    assert METRICS["accuracy"](p, y) == pytest.approx(3 / 5, abs=EXACT)
    assert METRICS["f1"](p, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1), abs=EXACT)
    # MCC = (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2)
    assert METRICS["mcc"](p, y) == pytest.approx(1 / 6, abs=EXACT)
    x, t = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    # Pearson of centred (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): 4 / 5
    assert METRICS["pearson"](x, t) == pytest.approx(0.8, abs=EXACT)
    # Spearman = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: 1 - 6 * 2 / 60
    assert METRICS["spearman"](x, t) == pytest.approx(0.8, abs=EXACT)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 200))
    labels = rng.integers(0, 2, size=n)
    predictions = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    assert METRICS["accuracy"](predictions, labels) == pytest.approx(accuracy_score(labels, predictions))
    assert METRICS["f1"](predictions, labels) == pytest.approx(f1_score(labels, predictions))
    assert METRICS["mcc"](predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions))
    three = rng.integers(0, 3, size=n)
    guess = np.where(rng.random(n) < 0.5, three, rng.integers(0, 3, size=n))
    assert METRICS["mcc"](guess, three) == pytest.approx(matthews_corrcoef(three, guess))


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, size=80) * 5) / 5  # ties, like STS-B
    predictions = labels + rng.normal(0, 1.5, size=80)
    predictions[:10] = 2.0  # tied predictions too
    assert METRICS["pearson"](predictions, labels) == pytest.approx(pearsonr(predictions, labels)[0])
    assert METRICS["spearman"](predictions, labels) == pytest.approx(spearmanr(predictions, labels)[0])
    assert np.array_equal(old_average_ranks(labels), rankdata(labels))


def test_task_metric_mapping_and_selection_metric():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=50)
    predictions = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    assert compute_metrics(GLUE_TASKS["cola"], predictions, labels) == {
        "mcc": pytest.approx(matthews_corrcoef(labels, predictions))}
    mrpc = compute_metrics(GLUE_TASKS["mrpc"], predictions, labels)
    assert mrpc == {"f1": pytest.approx(f1_score(labels, predictions)),
                    "accuracy": pytest.approx(accuracy_score(labels, predictions))}
    assert set(compute_metrics(GLUE_TASKS["rte"], predictions, labels)) == {"accuracy"}
    scores, targets = rng.uniform(0, 5, 50), rng.uniform(0, 5, 50)
    stsb = compute_metrics(GLUE_TASKS["stsb"], scores, targets)
    assert stsb == {"pearson": pytest.approx(pearsonr(scores, targets)[0]),
                    "spearman": pytest.approx(spearmanr(scores, targets)[0])}
    for task in GLUE_TASKS.values():
        kind = rng.uniform(0, 5, 20) if task.is_regression else rng.integers(0, task.num_labels, 20)
        values = compute_metrics(task, kind, kind)
        assert set(values) == set(task.metric_names) and task.select_metric in values
        assert all(type(v) is float for v in values.values())
        assert values[task.select_metric] == pytest.approx(1.0)


def test_padding_examples_are_masked_out():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=40)
    predictions = rng.integers(0, 2, size=40)
    weights = np.ones(40, dtype=np.float32)
    weights[30:] = 0.0
    padded_predictions = predictions.copy()
    padded_predictions[30:] = 1 - labels[30:]  # padding rows are all wrong
    for task in (GLUE_TASKS["mrpc"], GLUE_TASKS["cola"]):
        assert compute_metrics(task, padded_predictions, labels, weights) == pytest.approx(
            compute_metrics(task, predictions[:30], labels[:30]))
    scores = rng.normal(size=40)
    targets = scores + rng.normal(size=40)
    masked = compute_metrics(GLUE_TASKS["stsb"], scores[:, None], targets, weights)
    assert masked == pytest.approx(compute_metrics(GLUE_TASKS["stsb"], scores[:30], targets[:30]))
    with pytest.raises(ValueError, match="all weights are zero"):
        compute_metrics(GLUE_TASKS["rte"], predictions, labels, np.zeros(40))


def test_logits_are_arg_maxed():
    logits = np.array([[2.0, -1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2, 2])
    assert compute_metrics(GLUE_TASKS["mnli"], logits, labels) == {"accuracy": 0.75}
    with pytest.raises(ValueError):
        compute_metrics(GLUE_TASKS["stsb"], logits, labels)
    with pytest.raises(ValueError):
        compute_metrics(GLUE_TASKS["rte"], labels[:3], labels)


def test_degenerate_inputs_give_zero_not_nan():
    labels = np.array([0, 1, 1, 0, 1])
    constant = np.ones(5, dtype=int)
    assert compute_metrics(GLUE_TASKS["cola"], constant, labels) == {"mcc": 0.0}
    assert compute_metrics(GLUE_TASKS["cola"], labels, constant) == {"mcc": 0.0}
    assert matthews_corrcoef(labels, constant) == 0.0  # the same convention as scikit-learn
    zeros = np.zeros(5, dtype=int)
    assert compute_metrics(GLUE_TASKS["mrpc"], zeros, zeros) == {"f1": 0.0, "accuracy": 1.0}
    flat = compute_metrics(GLUE_TASKS["stsb"], np.full(5, 2.5), np.arange(5.0))
    assert flat == {"pearson": 0.0, "spearman": 0.0}
    assert not any(math.isnan(v) for v in flat.values())
    one = compute_metrics(GLUE_TASKS["stsb"], np.array([1.0]), np.array([2.0]))
    assert one == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("seed", range(10))
def test_accuracy_is_the_float_scikit_learn_returns(seed):
    # Both count the matches exactly (0/1 summed in float64) and divide once by N, so the
    # two floats are equal, not merely close.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20000))
    labels = rng.integers(0, 3, size=n)
    predictions = np.where(rng.random(n) < rng.random(), labels, rng.integers(0, 3, size=n))
    assert METRICS["accuracy"](predictions, labels) == float(accuracy_score(labels, predictions))


def test_an_accuracy_run_imports_neither_scikit_learn_nor_scipy_s_stats_or_optimize():
    code = ("import sys, numpy as np\n"
            "import aa_jax.train, aa_jax.cli\n"
            "from aa_jax.data import GLUE_TASKS, compute_metrics\n"
            "from aa_jax.data.metrics import majority_class_scores\n"
            "from aa_jax.rational import init_coefficients\n"
            "y = np.array([0, 1, 1, 0])\n"
            "compute_metrics(GLUE_TASKS['sst2'], np.array([0, 1, 0, 0]), y)\n"
            "majority_class_scores(GLUE_TASKS['sst2'], y)\n"
            "init_coefficients('one')\n"
            "print(sorted(m for m in ('sklearn', 'scipy.stats', 'scipy.optimize', 'pandas')\n"
            "             if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

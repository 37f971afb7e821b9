"""Tests for the GLUE metrics: agreement with scikit-learn / SciPy, masking of padding
examples, degenerate inputs, and the task-to-metric mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from aa_jax.data import GLUE_TASKS, METRICS, compute_metrics
from aa_jax.data.metrics import average_ranks


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
    assert np.array_equal(average_ranks(labels), rankdata(labels))


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

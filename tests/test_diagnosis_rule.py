"""The STS-B collapse study's rule (experiments/diagnosis.py) on synthetic results."""

from __future__ import annotations

import json

from experiments import diagnosis, grid

SEEDS = [42, 92, 111, 245, 651]


def study(tmp_path, scores: dict[str, list], seeds=SEEDS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.json"
    path.write_text(json.dumps({
        "base": {"task": "stsb", "train_size": 500},
        "methods": {"aa_x": {"method": "aa"}, "aa_y": {"method": "aa"},
                    "aa_z": {"method": "aa"}},
        "grid": {"method": list(scores), "seed": seeds}}))
    sweep = grid.Sweep.load(path, results=tmp_path / "results")
    done, failed = {}, {}
    for label, values in scores.items():
        for seed, value in zip(seeds, values):
            name = f"stsb-{label}-500-{seed}"
            if value is None:
                failed[name] = {"error": "UserError: Training diverged at step 40 (epoch 4)"}
                continue
            run = sweep.results / name
            run.mkdir(parents=True)
            record = {"epoch": 3, "loss": 1.0,
                      "grad_norms": {"rational": {"mean": 2.0, "max": 3.0}},
                      "rationals": {"0": {"input_min": -1.0, "input_max": 4.0,
                                          "output_min": -7.0, "output_max": 1.0}}}
            (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
            done[name] = {"test": {"spearman": value / 100}, "best_epoch": 3}
    return sweep, done, failed


def test_the_rule_names_the_candidates_that_pass_and_counts_divergence(tmp_path):
    sweep, done, failed = study(tmp_path, {
        "baseline": [60, 65, 70, 72, 75],
        "aa": [20, 30, 70, 72, 74],          # 2 of 5 below the baseline's 60: to explain
        "aa_x": [55, 70, 71, 72, 73],        # 1 of 5: passes
        "aa_y": [10, 20, 70, 71, 72],        # 2 of 5: does not
        "aa_z": [None, 59, 70, 71, 72]})     # diverged + 1 below: 2 of 5, does not
    text = "\n".join(diagnosis.finding(sweep, done, failed))
    assert "## 500 examples, seeds 42, 92, 111, 245, 651" in text
    assert "Threshold: the baseline's lowest test Spearman, 60.00." in text
    assert "| aa_z | 5 | 59.00, 70.00, 71.00, 72.00, diverged | 2 of 5 |" in text
    assert ("aa collapsed on 2 of 5 seeds. Passes the rule (a candidate cause, to confirm "
            "with more seeds): aa_x (1 of 5 collapsed).") in text
    assert ("| aa | 5 | 20.00, 30.00, 70.00, 72.00, 74.00 | 2 of 5 | 7 / 7 | 4 / 4 | 2 / 2 "
            "| 3 / 3 |") in text


def test_the_epoch_a_run_starts_to_fit_is_read_from_its_losses(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    losses = [3.4, 2.1, 2.05, 1.2, 1.05, 0.4]  # half of 2.1441 is 1.072: epoch 5
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": x}) + "\n" for e, x in enumerate(losses, 1)))
    assert diagnosis.rational_summary(run, 5) == {"fits from epoch": 5}
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 2.0}) + "\n")
    assert diagnosis.rational_summary(run, 1) == {}  # never fits: no entry


def test_no_collapse_or_unfinished_seeds_conclude_nothing(tmp_path):
    sweep, done, failed = study(tmp_path, {
        "baseline": [60, 65, 70, 72, 75], "aa": [59, 70, 71, 72, 73],
        "aa_x": [50, 50, 50, 50, 50]})
    assert "No collapse to explain: 1 of aa's 5 seeds" in "\n".join(
        diagnosis.finding(sweep, done, failed))
    sweep, done, failed = study(tmp_path / "b", {
        "baseline": [60, 65, 70, 72, 75], "aa": [20, 30, 70, 72, 74],
        "aa_x": [70, 71, 72, 73]})
    text = "\n".join(diagnosis.finding(sweep, done, failed))
    assert "No candidate tested (none yet) passes the rule. Still open: aa_x (4 of 5 seeds)." \
        in text
    sweep, done, failed = study(tmp_path / "c", {"baseline": [60, 65, 70], "aa": [20, 30]})
    assert "Open: 3 of the baseline's 5 seeds have finished" in "\n".join(
        diagnosis.finding(sweep, done, failed))


def test_ten_seeds_scale_the_thresholds(tmp_path):
    ten = SEEDS + [11, 22, 33, 44, 55]
    sweep, done, failed = study(tmp_path, {
        "baseline": [60, 65, 70, 72, 75, 61, 62, 63, 64, 66],
        "aa": [70, 71, 72, 73, 74, 10, 20, 30, 40, 75],   # 0 of the first 5; 4 of 10
        "aa_x": [70, 71, 72, 73, 74, 10, 20, 70, 71, 72]}, seeds=ten)  # 2 of 10: passes
    text = "\n".join(diagnosis.finding(sweep, done, failed))
    first, both = text.split("## 500 examples, seeds 42, 92, 111, 245, 651, 11")
    assert "No collapse to explain: 0 of aa's 5 seeds" in first
    assert "aa collapsed on 4 of 10 seeds. Passes the rule" in both and "aa_x (2 of 10" in both
    sweep, done, failed = study(tmp_path / "b", {
        "baseline": [60, 65, 70, 72, 75, 61, 62, 63, 64, 66],
        "aa": [70, 71, 72, 73, 74, 10, 20, 30, 40, 75],
        "aa_x": [10, 20, 30, 73, 74], "aa_y": [10, 71, 72, 73, 74]}, seeds=ten)
    both = "\n".join(diagnosis.finding(sweep, done, failed)).split("651, 11")[1]
    assert ("Still open: aa_x (5 of 10 seeds; 3 collapsed already, so it cannot pass), "
            "aa_y (5 of 10 seeds).") in both

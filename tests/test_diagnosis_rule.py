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


def test_mean_differences_against_aa_are_welch_intervals_by_hand():
    # aa: mean 20, sample variance 100; aa_x: mean 50, variance 25; 5 runs each.
    # Welch: se^2 = 100/5 + 25/5 = 25, df = 25^2 / ((20^2 + 5^2) / 4) = 2500/425 * 4.
    from scipy import stats

    aa = [10.0, 20.0, 30.0, 10.0, 30.0]  # deviations ±10, 0: variance 400/4 = 100
    x = [45.0, 50.0, 55.0, 45.0, 55.0]  # deviations ±5, 0: variance 100/4 = 25
    df = 25.0 ** 2 / ((20.0 ** 2 + 5.0 ** 2) / 4)
    half = stats.t.ppf(0.975, df) * 5.0
    line, = diagnosis.mean_differences({"aa": aa, "aa_x": x, "aa_y": [1.0]})
    assert f"aa_x +30.00 [{30 - half:+.2f}, {30 + half:+.2f}]" in line
    assert "aa's (20.00)" in line and "aa_y" not in line  # one run: no interval
    assert diagnosis.mean_differences({"aa": [1.0], "aa_x": x}) == []
    assert "aa_x +1.00 (no spread in either)" in diagnosis.mean_differences(
        {"aa": [3.0, 3.0], "aa_x": [4.0, 4.0]})[0]

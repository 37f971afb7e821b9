"""The pilots' rules (experiments/learning_rate.py, experiments/switch_rate.py) on
synthetic results: what they read, what they pick, and hostile files."""

import json

import pytest

from experiments import grid, learning_rate, switch_rate
from experiments.grid import SWEEPS

MPNET_LR = SWEEPS / "pilot" / "mpnet_lr.json"


def _finish(sweep, point, dev=None, test=0.0, metric="accuracy"):
    run = sweep.result_dir(point)
    run.mkdir(parents=True)
    record = {"select_metric": metric, "dev": {metric: dev}, "test": {metric: test}}
    (run / "result.json").write_text(json.dumps(record))


def _by_rate(sweep):
    out: dict = {}
    for p in sweep.points:
        out.setdefault(p.settings["learning_rate"], []).append(p)
    return out


def test_the_learning_rate_rule_means_seeds_then_tasks_and_waits_for_every_run(tmp_path):
    s = grid.Sweep.load(MPNET_LR, results=tmp_path / "results")
    rates = _by_rate(s)
    assert sorted(rates) == [0.001, 0.003] and all(len(v) == 4 for v in rates.values())
    # 3e-3: sst2 (80 + 90) / 2 = 85, stsb (60 + 70) / 2 = 65 -> 75.
    # 1e-3: sst2 84, stsb 64 -> 74. Test scores are set the other way round: never read.
    dev = {(0.003, "sst2"): [0.80, 0.90], (0.003, "stsb"): [0.60, 0.70],
           (0.001, "sst2"): [0.84, 0.84], (0.001, "stsb"): [0.64, 0.64]}
    seen: dict = {}
    for rate, points in rates.items():
        for p in points:
            key = (rate, p.settings["task"])
            i = seen.setdefault(key, 0)
            seen[key] += 1
            if (rate, p.settings["task"], i) == (0.001, "stsb", 1):
                continue  # one run still to finish
            _finish(s, p, dev=dev[key][i], test=1.0 - dev[key][i])
    lines, chosen = learning_rate.evidence(s)
    assert chosen is None and "7 of 8 runs of the reference label have finished." in lines
    last = [p for p in rates[0.001] if p.settings["task"] == "stsb"][1]
    _finish(s, last, dev=0.64, test=0.36)
    lines, chosen = learning_rate.evidence(s)
    assert chosen == 0.003
    assert "| 0.003 | 85.00 (2) | 65.00 (2) | 75.00 |" in lines
    assert "| 0.001 | 84.00 (2) | 64.00 (2) | 74.00 |" in lines


@pytest.mark.parametrize("means, want", [
    ({0.003: 75.0, 0.001: 74.6}, 0.001),   # within 0.5: the smaller rate
    ({0.003: 75.0, 0.001: 74.5}, 0.001),   # exactly 0.5 is a tie
    ({0.003: 75.0, 0.001: 74.4}, 0.003),
    ({0.003: 70.0, 0.001: 74.0}, 0.001),
    ({0.01: 75.0, 0.003: 74.8, 0.001: 74.6}, 0.001),  # the smallest within 0.5 of the best
    ({0.01: 75.0, 0.003: 74.8, 0.001: 70.0}, 0.003),
])
def test_a_tie_within_half_a_point_goes_to_the_smaller_rate(means, want):
    assert learning_rate.pick(means) == want


def test_the_learning_rate_rule_names_a_result_without_a_dev_score(tmp_path, capsys):
    spec = json.loads(MPNET_LR.read_text())
    path = tmp_path / "pilot.json"
    path.write_text(json.dumps(spec))
    results = tmp_path / "results"
    s = grid.Sweep.load(path, results=results)
    for p in s.points:
        _finish(s, p, dev=0.5)
    bad = s.result_dir(s.points[0]) / "result.json"
    bad.write_text(json.dumps({"select_metric": "accuracy", "dev": {"accuracy": "NaN"},
                               "test": {}}))
    with pytest.raises(learning_rate.UserError, match="no finite dev score"):
        learning_rate.evidence(s)
    bad.write_text("{not json")
    with pytest.raises(learning_rate.UserError, match="damaged"):
        learning_rate.evidence(s)


def test_the_switch_rate_rule_takes_a_pilot_file_and_names_a_damaged_history(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grid, "RESULTS", tmp_path / "results")
    spec = json.loads(switch_rate.SPEC.read_text())
    path = tmp_path / "pilot.json"
    path.write_text(json.dumps(spec))
    s = grid.Sweep.load(path)
    assert s.results == tmp_path / "results" / "pilot"
    run = s.result_dir(s.points[0])
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "switch_probs": {"0": 0.5}}\n')
    (run / "result.json").write_text("{}")
    assert switch_rate.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not hold the switch probabilities of epochs 1 and 5" in err
    assert len(err.splitlines()) == 1


def test_the_switch_rate_rule_refuses_a_label_without_a_rate(tmp_path, capsys):
    spec = json.loads(switch_rate.SPEC.read_text())
    spec["methods"]["aa_s0.5"]["switch_learning_rate"] = "fast"
    path = tmp_path / "pilot.json"
    path.write_text(json.dumps(spec))
    assert switch_rate.main([str(path)]) == 2
    assert "sets no numeric switch_learning_rate" in capsys.readouterr().err

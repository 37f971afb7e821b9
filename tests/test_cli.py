"""The eval and architecture commands, and training on a user's own files."""

import csv
import json

import pytest

from aa_jax import cli


@pytest.fixture(scope="module")
def aa_run(tmp_path_factory, tiny_checkpoint, fake_glue):
    out = tmp_path_factory.mktemp("runs") / "aa"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)]) == 0
    return out


def test_eval_reproduces_the_stored_result(aa_run, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(aa_run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    result = json.loads((aa_run / "result.json").read_text())
    assert metrics["test"] == result["test"]
    assert metrics["dev"] == result["dev"]


def test_architecture_prints_and_draws(aa_run, tmp_path, capsys):
    png = tmp_path / "arch.png"
    assert cli.main(["architecture", str(aa_run), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    learned = json.loads((aa_run / "architecture.json").read_text())
    assert f"selected layers ({len(learned['selected_layers'])} of 2)" in out
    assert "p(adapter)=" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(learned["layers"]) == 2
    for layer in learned["layers"]:
        assert len(layer["rational"]["numerator"]) == 6
        assert len(layer["rational"]["denominator"]) == 4
        assert abs(sum(layer["switch_probs"]) - 1) < 1e-6
    assert learned["source"]["task"] == "rte" and learned["source"]["seed"] == 42


@pytest.mark.parametrize("regression", [False, True])
def test_train_on_own_csv_files(tmp_path, tiny_checkpoint, regression, capsys):
    words = ["good", "bad", "fine", "poor", "great", "awful"]
    for name, n in (("train.csv", 40), ("test.csv", 12)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "gold"])
            for i in range(n):
                label = (i % 5) * 0.75 if regression else ("yes" if i % 2 else "no")
                w.writerow([f"the film was {words[i % 6]}", f"it is {words[(i + 1) % 6]}",
                            label])
    out = tmp_path / "run"
    code = cli.main(["train", "--model", str(tiny_checkpoint), "--data",
                     f"{tmp_path / 'train.csv'},{tmp_path / 'test.csv'}",
                     "--text-columns", "premise,hypothesis", "--label-column", "gold",
                     "--method", "baseline", "--train-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert set(result["test"]) == ({"pearson", "spearman"} if regression else {"accuracy"})
    assert result["examples"] == {"train": 24, "dev": 8, "test": 12}

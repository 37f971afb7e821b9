"""Files written by aa_jax 0.3 (before adapter kinds owned their options and the selection
held every switch): a run folder, its learned architecture and an adapter folder, made by
that version (tests/reference/v03, from the tiny RoBERTa and two small CSV files), are read
here, converted, and give what 0.3 gave."""

import json
import shutil
from pathlib import Path

import pytest

from aa_jax import cli
from aa_jax.adapters import Architecture, SeqBnOptions
from aa_jax.learned import read_learned

REPO = Path(__file__).resolve().parents[1]
V03 = REPO / "tests" / "reference" / "v03"
TEXTS = ["a good film indeed", "poor acting so"]


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """A copy of the 0.3 run, read from the repository's root (its config names the model
    and the data relative to it)."""
    monkeypatch.chdir(REPO)
    run = tmp_path / "aa-run"
    shutil.copytree(V03 / "aa-run", run)
    return run


def _predictions(capsys, folder) -> list[dict]:
    capsys.readouterr()
    words = ["predict", str(folder)]
    for text in TEXTS:
        words += ["--text", text]
    assert cli.main(words) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _same(got: list[dict], want: list[dict]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        for label, p in w["probabilities"].items():
            # The same float32 program: only the order of a few reductions may differ.
            assert g["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_an_old_learned_architecture_is_read_with_its_kind_options():
    learned = read_learned(V03 / "aa-run")
    assert learned["selected_layers"] == [0, 2]
    arch = Architecture.from_dict(learned["architecture"])
    assert arch.adapter == "seq_bn" and arch.options == SeqBnOptions(16)
    assert arch.to_dict()["schema"] == "aa_jax.architecture/v2"


def test_an_old_adapter_folder_predicts_what_it_predicted(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    want = [json.loads(line) for line in (V03 / "predict.jsonl").read_text().splitlines()]
    _same(_predictions(capsys, V03 / "aa-export"), want)


def test_an_old_run_evaluates_and_exports_as_it_did(old_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(old_run)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(
        (V03 / "eval-run.json").read_text())
    export = tmp_path / "export"
    assert cli.main(["export", str(old_run), "--out", str(export)]) == 0
    record = json.loads((export / "adapter_config.json").read_text())
    assert record["selected_layers"] == [0, 2]
    want = [json.loads(line) for line in (V03 / "predict.jsonl").read_text().splitlines()]
    _same(_predictions(capsys, export), want)


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
def test_an_old_run_cannot_resume_and_says_so(old_run, capsys):
    config = json.loads((old_run / "config.json").read_text())
    (old_run / "result.json").unlink()  # as if interrupted after its last checkpoint
    before = sorted(p.name for p in (old_run / "checkpoints").iterdir())
    code = cli.main(["train", "--model", config["model"], "--data", ",".join(config["data"]),
                     "--text-columns", "text", "--label-column", "label", "--method", "aa",
                     "--train-size", "full", "--epochs", "2", "--batch-size", "8",
                     "--max-length", "32", "--no-progress", "--switch-lr", "0.5",
                     "--protocol", "cpu", "--out", str(old_run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "was written by aa_jax 0.3" in err and err.count("\n") == 1
    assert sorted(p.name for p in (old_run / "checkpoints").iterdir()) == before

"""What a user of the library meets on their own data: the first line says what a run
trains on, and an export needs nothing but the run folder."""

import json
import shutil

import pytest

from aa_jax import cli


def _files(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.csv", rows[:30]), ("test.csv", rows[30:])):
        (folder / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in part))


ROWS = [("a good film", "yes"), ("a bad plot", "no"), ("great acting", "yes"),
        ("dull and long", "no")] * 10


def test_own_data_trains_on_all_of_it_and_says_so_first(tmp_path, tiny_checkpoint,
                                                        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _files(tmp_path / "data", ROWS)
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--data",
                     "data/train.csv,data/test.csv", "--text-columns", "text",
                     "--method", "baseline", "--epochs", "1", "--batch-size", "8",
                     "--max-length", "16", "--no-progress", "--out", "run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # 30 training rows, all used: 22 to train and 8 for dev (75/25), the 10 test rows.
    assert first == ("training on 22 examples (dev 8, test 10; all examples), protocol "
                     "cpu: lr 0.003, switch lr 0.15, rational lr 0.03")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["train_size"] is None and result["examples"]["train"] == 22


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
def test_export_needs_only_the_run_folder(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    work = tmp_path / "work"
    _files(work / "data", ROWS)
    shutil.copytree(tiny_checkpoint, work / "models" / "tiny")  # a relative model folder
    monkeypatch.chdir(work)
    assert cli.main(["train", "--model", "models/tiny", "--data",
                     "data/train.csv,data/test.csv", "--text-columns", "text", "--method",
                     "aa", "--epochs", "1", "--batch-size", "8", "--max-length", "16",
                     "--no-progress", "--out", "run"]) == 0
    shutil.rmtree(work / "data")  # the training data is gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and the network
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    capsys.readouterr()
    assert cli.main(["export", str(work / "run"), "--out", "adapters"]) == 0, \
        capsys.readouterr().err
    record = json.loads((elsewhere / "adapters" / "adapter_config.json").read_text())
    assert record["task"]["label_names"] == ["no", "yes"]
    assert cli.main(["predict", "adapters", "--text", "a good film"]) == 0


def test_env_names_the_backend_and_its_devices(capsys):
    import jax

    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"backend: {jax.default_backend()}; {jax.device_count()} device(s)" in out
    assert all(f"({d.platform})" in out for d in jax.local_devices())

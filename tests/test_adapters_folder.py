"""Adapter folders (``aa-jax export``, save_adapters/load_adapters): self-contained, loaded
from a folder or the Hub's cache, refused on another base model; predict on new text."""

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from aa_jax import cli
from aa_jax.data import pipeline
from aa_jax.errors import UserError
from aa_jax.run_setup import load_run
from aa_jax.export import load_adapters, save_adapters
from aa_jax.inference import predict
from aa_jax.step import make_predict

from conftest import write_tiny_checkpoint

TEXTS = ["a gripping film", "dull and far too long", "the cast is wonderful",
         "I would not watch it again", "fine", "an instant classic"]


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "verdict"])
        w.writerows(rows)


@pytest.fixture(scope="module")
def own_data_run(tmp_path_factory, tiny_checkpoint):
    """A finished AA run on the user's own CSV files, and those files."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "great", "awful", "cast", "long"]
    rows = [(" ".join(rng.choice(words, 5)), ["no", "yes"][i % 2]) for i in range(40)]
    _write_csv(root / "train.csv", rows[:32])
    _write_csv(root / "test.csv", rows[32:])
    out = root / "run"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--data",
                     f"{root / 'train.csv'},{root / 'test.csv'}", "--text-columns", "review",
                     "--label-column", "verdict", "--method", "aa", "--train-size", "full", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)]) == 0
    return out, [root / "train.csv", root / "test.csv"]


def _run_predictions(run_dir: Path, texts: list[str]) -> np.ndarray:
    exp, params, _ = load_run(run_dir)
    fn = make_predict(exp.model, exp.task.is_regression, exp.drop_first)
    enc = pipeline.encode(exp.pretrained.tokenizer, texts, exp.config.max_length)
    out = []
    for batch in pipeline.batches(enc, np.zeros(len(enc), np.int32), 4):
        out.append(np.asarray(fn(params, exp.frozen, batch))[batch["weights"] != 0])
    return np.concatenate(out)


def test_a_folder_needs_neither_the_training_data_nor_the_run(own_data_run, tmp_path):
    run, data = own_data_run
    want = _run_predictions(run, TEXTS)  # the run's own class ids, before the data goes
    folder = tmp_path / "adapters"
    record = save_adapters(folder, run)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapters.safetensors", "architecture.json"]
    assert record["task"]["label_names"] == ["no", "yes"]
    assert record["base_model"]["sizes"]["num_hidden_layers"] == 2
    assert len(record["base_model"]["weights_sha256"]) == 64
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in data:
        shutil.move(f, moved / f.name)
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the same base model: no warning
            adapters = load_adapters(copy)
        got = predict(adapters, TEXTS, batch_size=4)
    finally:
        for f in data:
            shutil.move(moved / f.name, f)
    assert [p["label"] for p in got] == [["no", "yes"][i] for i in want]
    for p in got:
        assert set(p["probabilities"]) == {"no", "yes"}
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-6)
        assert p["probabilities"][p["label"]] >= 0.5


def test_the_model_card_has_the_hub_metadata_and_the_command(own_data_run, tmp_path):
    run, _ = own_data_run
    folder = tmp_path / "adapters"
    record = save_adapters(folder, run)
    card = (folder / "README.md").read_text()
    from huggingface_hub import ModelCard

    parsed = ModelCard(card)  # the Hub's own reader of the metadata block
    meta, body = parsed.data.to_dict(), parsed.text
    assert meta["library_name"] == "aa_jax"
    assert meta["pipeline_tag"] == "text-classification"
    assert meta["metrics"] == ["accuracy"]
    assert "datasets" not in meta  # the user's own files, not GLUE
    assert f"Selected layers: {record['selected_layers']} of 2" in body
    assert record["command"] in body and "--method aa" in record["command"]


def test_another_base_model_is_refused_in_one_sentence(own_data_run, tmp_path):
    run, _ = own_data_run
    folder = tmp_path / "adapters"
    save_adapters(folder, run)
    deeper = write_tiny_checkpoint(tmp_path / "deeper", layers=3)
    with pytest.raises(UserError, match=r"were trained on .* with num_hidden_layers 2 "
                                        r"\(not 3\); load them into that base model"):
        load_adapters(folder, base_model=str(deeper))
    other = write_tiny_checkpoint(tmp_path / "other-weights", seed=1)
    with pytest.warns(UserWarning, match="other weights"):
        load_adapters(folder, base_model=str(other))


def test_a_hub_repo_id_loads_through_the_hub_s_cache(own_data_run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    run, _ = own_data_run
    folder = tmp_path / "adapters"
    save_adapters(folder, run)
    # The Hub's cache as a download leaves it: refs/main names the snapshot's commit.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--sst-adapters"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = load_adapters("someone/sst-adapters")
    assert hub.folder == (repo / "snapshots" / commit).resolve()
    assert predict(hub, TEXTS) == predict(load_adapters(folder), TEXTS)
    with pytest.raises(UserError, match="Could not get adapters 'someone/missing'"):
        load_adapters("someone/missing")


def test_predict_from_the_command_line(own_data_run, tmp_path, capsys):
    run, _ = own_data_run
    folder = tmp_path / "adapters"
    assert cli.main(["export", str(run), "--out", str(folder)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(folder), "--text", TEXTS[0], "--text", TEXTS[1]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = predict(load_adapters(folder), TEXTS)
    assert printed == want[:2]
    # A file with the column the adapters were trained on, or a plain "text" column.
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    _write_csv(tmp_path / "in.csv", [(t, "") for t in TEXTS])
    for source in (jsonl, tmp_path / "in.csv"):
        out = tmp_path / f"{source.suffix[1:]}.jsonl"
        assert cli.main(["predict", str(folder), "--file", str(source), "--out", str(out),
                         "--no-progress"]) == 0
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert all(g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-6)
                   for g, w in zip(got, want))
    capsys.readouterr()
    assert cli.main(["predict", str(folder), "--text", "a", "--text-pair", "b"]) == 2
    assert "single sentences" in capsys.readouterr().err
    assert cli.main(["predict", str(folder)]) == 2
    assert "--text (repeatable) or --file" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nothing-here"), "--text", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_regression_folder_predicts_scores(tiny_checkpoint, fake_glue, tmp_path):
    run = tmp_path / "stsb"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "stsb", "--method", "baseline", "--train-size", "16",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                     "--no-progress", "--out", str(run)]) == 0
    record = save_adapters(tmp_path / "adapters", run)
    assert record["selected_layers"] is None  # a run without switches keeps every adapter
    adapters = load_adapters(tmp_path / "adapters")
    pairs = [("a man plays", "a man is playing"), ("a cat", "the stock market fell")]
    got = predict(adapters, [a for a, _ in pairs], [b for _, b in pairs])
    want = _run_predictions(run, [[a for a, _ in pairs], [b for _, b in pairs]])
    assert [g["score"] for g in got] == pytest.approx(want.tolist(), abs=1e-6)
    with pytest.raises(UserError, match="sentence pairs"):
        predict(adapters, ["only one sentence"])
    card = (tmp_path / "adapters" / "README.md").read_text()
    from huggingface_hub import ModelCard

    assert ModelCard(card).data.datasets == ["nyu-mll/glue"]


def test_every_top_level_name_resolves():
    import aa_jax

    for name in aa_jax.__all__:
        assert getattr(aa_jax, name) is not None, name
    assert aa_jax.predict is predict and aa_jax.load_adapters is load_adapters

"""--data beyond two files: an explicit dev file, a dataset folder or Hub id read with
`datasets` (splits chosen by name, class names kept), and --metric."""

import json

import numpy as np
import pytest

from aa_jax import cli
from aa_jax.data.custom import load_custom
from aa_jax.data.glue import get_task, with_metric
from aa_jax.errors import UserError

WORDS = ["good", "bad", "film", "plot", "great", "awful", "cast", "long"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(WORDS, 4)), "label": ["neg", "pos"][i % 2]}
            for i in range(n)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_explicit_dev_file_is_used_as_it_is(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _rows(20, 0))
    test = _jsonl(tmp_path / "test.jsonl", _rows(6, 1))
    dev = _jsonl(tmp_path / "dev.jsonl", _rows(5, 2))
    task, splits = load_custom([train, test, dev], ["text"], "label", train_size=12, seed=3)
    assert splits["dev"].texts[0] == [r["text"] for r in _rows(5, 2)]
    assert len(splits["train"]) == 12 and len(splits["test"]) == 6
    pool = [r["text"] for r in _rows(20, 0)]
    order = np.random.default_rng(3).permutation(20)[:12]
    assert splits["train"].texts[0] == [pool[i] for i in order]
    _, every = load_custom([train, test, dev], ["text"], "label")
    assert len(every["train"]) == 20  # no 75/25 cut when the dev set is given
    with pytest.raises(UserError, match=r"--train-size 30 is larger than training file"):
        load_custom([train, test, dev], ["text"], "label", train_size=30)


def _dataset_folder(root):
    """A dataset folder as `datasets` reads one: Parquet files named by split, the label
    a ClassLabel whose names are not in sorted order."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg"])})
    root.mkdir()
    for split, n, seed in (("train", 16, 0), ("validation", 6, 1), ("test", 8, 2)):
        rows = _rows(n, seed)
        ds = datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                         "label": [r["label"] == "neg" for r in rows]},
                                        features=features)
        ds.to_parquet(str(root / f"{split}.parquet"))
    return root


@pytest.mark.slow  # datasets' import and cache set-up dominate (about 20 s on 2 cores)
def test_a_dataset_folder_is_read_with_datasets(tmp_path):
    folder = _dataset_folder(tmp_path / "reviews")
    task, splits = load_custom([str(folder)], ["text"], "label", splits={"dev": "validation"})
    assert task.label_names == ("pos", "neg")  # the dataset's own class names and ids
    assert splits["dev"].labels.tolist() == [r["label"] == "neg" for r in _rows(6, 1)]
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == (16, 6, 8)
    _, cut = load_custom([str(folder)], ["text"], "label", seed=0)
    assert (len(cut["train"]), len(cut["dev"])) == (12, 4)  # no dev split: the 75/25 cut
    with pytest.raises(UserError, match=r"has no split 'dev' \(it has train, validation, "
                                        r"test\); choose one with --split-dev"):
        load_custom([str(folder)], ["text"], "label", splits={"dev": "dev"})
    with pytest.raises(UserError, match="Could not load dataset 'someone/not-here'"):
        load_custom(["someone/not-here"], ["text"], "label")


def test_metric_selects_and_is_checked_against_the_task():
    rte = get_task("rte")
    f1 = with_metric(rte, "f1")
    assert f1.select_metric == "f1" and f1.metric_names == ("accuracy", "f1")
    assert with_metric(rte, None) is rte
    with pytest.raises(UserError, match="--metric pearson does not fit rte, a 2-class "
                                        "classification task; choose accuracy, f1, mcc"):
        with_metric(rte, "pearson")
    with pytest.raises(UserError, match="choose accuracy, mcc[.]"):
        with_metric(get_task("mnli"), "f1")


def test_train_on_a_dataset_folder_with_a_dev_split_and_f1(tiny_checkpoint, tmp_path):
    folder = _dataset_folder(tmp_path / "reviews")
    out = tmp_path / "run"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--data", str(folder),
                     "--split-dev", "validation", "--text-columns", "text", "--metric", "f1",
                     "--method", "baseline", "--train-size", "full", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["select_metric"] == "f1" and set(result["test"]) == {"accuracy", "f1"}
    assert result["examples"] == {"train": 16, "dev": 6, "test": 8}
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["data_source"] == str(folder)

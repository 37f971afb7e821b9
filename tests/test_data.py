"""Tests for the task registry, split loading, the low-data protocol, user datasets,
tokenisation and batching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aa_jax.data import (
    GLUE_DIR_ENV,
    GLUE_TASKS,
    Encoded,
    Examples,
    batches,
    bucket_length,
    default_buckets,
    encode,
    get_task,
    in_dataset_order,
    length_order,
    load_custom,
    load_split,
    make_splits,
    num_batches,
    split_train_dev,
)
from aa_jax.errors import UserError
from fake_glue import write_fake_glue, write_split


def _real_glue_dir() -> Path | None:
    candidates = [os.environ.get(GLUE_DIR_ENV, ""),
                  Path(__file__).resolve().parents[1].parent / "shared" / "glue"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "rte").is_dir():
            return Path(candidate)
    return None


REAL_GLUE = _real_glue_dir()
needs_real_glue = pytest.mark.skipif(REAL_GLUE is None, reason="real GLUE Parquet folder not found")


@pytest.fixture(autouse=True)
def _no_glue_env(monkeypatch):
    """Tests choose their data folder explicitly; an inherited variable must not leak in."""
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def fake_glue(tmp_path_factory) -> Path:
    return write_fake_glue(tmp_path_factory.mktemp("glue"), tasks=("rte", "stsb", "cola", "mrpc"))


@pytest.fixture(scope="module")
def tokenizer():
    from aa_jax.models.loader import load_tokenizer, minilm_path

    return load_tokenizer(minilm_path())


def _examples(n: int, regression: bool = False) -> Examples:
    labels = (np.arange(n, dtype=np.float32) / 2 if regression
              else (np.arange(n) % 2).astype(np.int32))
    return Examples(texts=([f"s{i}" for i in range(n)],), labels=labels)


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_nine_glue_tasks_with_their_metrics():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    expected = {"cola": (("mcc",), "mcc"), "stsb": (("pearson", "spearman"), "spearman"),
                "mrpc": (("f1", "accuracy"), "f1"), "qqp": (("f1", "accuracy"), "f1")}
    for name, task in GLUE_TASKS.items():
        metrics, select = expected.get(name, (("accuracy",), "accuracy"))
        assert (task.metric_names, task.select_metric) == (metrics, select), name
        assert task.train_split == "train"
        assert task.test_split == ("validation_matched" if name == "mnli" else "validation")
        assert task.is_regression == (name == "stsb")
    assert GLUE_TASKS["stsb"].num_labels == 1 and GLUE_TASKS["stsb"].label_names is None
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["wnli"].label_names == ("not_entailment", "entailment")
    assert GLUE_TASKS["qnli"].text_columns == ("question", "sentence")
    assert GLUE_TASKS["sst2"].text_columns == ("sentence",)


def test_get_task_normalises_names_and_rejects_unknown_ones():
    assert get_task("STS-B") is GLUE_TASKS["stsb"]
    assert get_task("sst_2") is GLUE_TASKS["sst2"]
    assert get_task(GLUE_TASKS["rte"]) is GLUE_TASKS["rte"]
    with pytest.raises(UserError, match="Unknown task 'glue'; choose one of cola"):
        get_task("glue")


# ----------------------------------------------------------------------------- real GLUE


@needs_real_glue
@pytest.mark.parametrize("name, split, rows", [
    ("rte", "train", 2490), ("rte", "validation", 277), ("stsb", "train", 5749),
    ("cola", "train", 8551),
])
def test_real_glue_splits_have_the_documented_sizes(name, split, rows):
    examples = load_split(name, split, REAL_GLUE)
    task = GLUE_TASKS[name]
    assert len(examples) == rows
    assert len(examples.texts) == len(task.text_columns)
    assert all(isinstance(text, str) for column in examples.texts for text in column[:50])
    if task.is_regression:
        assert examples.labels.dtype == np.float32
        assert 0.0 <= examples.labels.min() and examples.labels.max() <= 5.0
    else:
        assert examples.labels.dtype == np.int32
        assert set(np.unique(examples.labels)) == {0, 1}


@needs_real_glue
def test_real_rte_validation_first_row_and_unlabeled_test():
    validation = load_split("rte", "validation", REAL_GLUE)
    assert validation.texts[0][0].startswith("Dana Reeve, the widow of the actor")
    assert validation.labels[0] == 1
    with pytest.raises(UserError, match=r"labels -1 outside rte's class ids 0\.\.1"):
        load_split("rte", "test", REAL_GLUE)
    test = load_split("rte", "test", REAL_GLUE, require_labels=False)
    assert len(test) == 3000 and set(test.labels) == {-1}
    with pytest.raises(UserError, match="outside stsb's range 0..5"):
        load_split("stsb", "test", REAL_GLUE)


@needs_real_glue
def test_real_rte_full_protocol_and_missing_qnli_train():
    splits = make_splits("rte", None, seed=0, glue_dir=REAL_GLUE)
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == (1867, 623, 277)
    with pytest.raises(UserError, match=r"qnli has no train-00000-of-00001\.parquet; pass --glue-dir"):
        make_splits("qnli", 100, seed=0, glue_dir=REAL_GLUE)


@needs_real_glue
def test_fake_glue_matches_the_real_schema(fake_glue):
    for name in ("rte", "stsb", "cola", "mrpc"):
        for split in ("train", "validation", "test"):
            real = pq.read_schema(REAL_GLUE / name / f"{split}-00000-of-00001.parquet")
            fake = pq.read_schema(fake_glue / name / f"{split}-00000-of-00001.parquet")
            assert fake.equals(real, check_metadata=True), (name, split)


# ----------------------------------------------------------------------------- fake GLUE


def test_fake_glue_files_load(fake_glue):
    for name in ("rte", "stsb", "cola", "mrpc"):
        task = GLUE_TASKS[name]
        train = load_split(name, "train", fake_glue)
        assert len(train) == 64 and len(train.texts) == len(task.text_columns)
        assert len(load_split(name, "validation", fake_glue)) == 32
        assert train.labels.dtype == (np.float32 if task.is_regression else np.int32)
        words = " ".join(train.texts[0]).split()
        assert len(set(words)) < 80 and train.texts[0][0][0].isupper()
    assert len(load_split("mrpc", "test", fake_glue)) == 32  # MRPC's test split is labeled
    with pytest.raises(UserError, match="labels -1"):
        load_split("cola", "test", fake_glue)
    unlabeled = load_split("stsb", "test", fake_glue, require_labels=False)
    assert np.all(unlabeled.labels == -1.0)


def test_loading_a_glue_split_imports_neither_pandas_nor_pyarrow_s_dataset(fake_glue):
    """GLUE's Parquet files are read with the file's own reader: ``pq.read_table`` would
    import ``pyarrow.dataset`` and pandas, which take longer than reading the split."""
    code = ("import sys\n"
            "from aa_jax.data import load_split\n"
            f"split = load_split('rte', 'train', {str(fake_glue)!r})\n"
            "assert len(split) == 64\n"
            "print(sorted(m for m in ('pandas', 'pyarrow.dataset', 'pyarrow.compute')\n"
            "             if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fake_glue_writes_mnli_with_its_own_split_names(tmp_path):
    write_fake_glue(tmp_path, tasks=("mnli",), n_train=8, n_validation=4)
    assert sorted(p.name for p in (tmp_path / "mnli").iterdir()) == [
        "test_matched-00000-of-00001.parquet", "train-00000-of-00001.parquet",
        "validation_matched-00000-of-00001.parquet"]
    splits = make_splits("mnli", None, seed=1, glue_dir=tmp_path)
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == (6, 2, 4)
    assert set(np.unique(splits["test"].labels)) <= {0, 1, 2}


def test_glue_dir_comes_from_the_environment_variable(fake_glue, monkeypatch, tmp_path):
    monkeypatch.setenv(GLUE_DIR_ENV, str(fake_glue))
    assert len(load_split("rte", "train")) == 64
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=f"does not exist; set {GLUE_DIR_ENV} to a folder"):
        load_split("rte", "train")


def test_hub_is_used_without_a_local_folder(fake_glue, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        file = fake_glue / name / f"{split}-00000-of-00001.parquet"
        return datasets.Dataset.from_parquet(str(file))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_split("stsb", "validation")
    assert calls == [("nyu-mll/glue", "stsb", "validation")]
    assert len(examples) == 32 and examples.labels.dtype == np.float32
    assert examples.texts[1] == load_split("stsb", "validation", fake_glue).texts[1]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"Could not load the nyu-mll/glue rte train split from "
                                        r"the Hugging Face hub \(Couldn't reach the Hugging Face "
                                        r"Hub\); connect"):
        load_split("rte", "train")


# ----------------------------------------------------------------------------- low-data protocol


def test_make_splits_is_deterministic_per_seed_and_uses_validation_as_test(fake_glue):
    a = make_splits("rte", 40, seed=3, glue_dir=fake_glue)
    b = make_splits("rte", 40, seed=3, glue_dir=fake_glue)
    c = make_splits("rte", 40, seed=4, glue_dir=fake_glue)
    assert (len(a["train"]), len(a["dev"]), len(a["test"])) == (30, 10, 32)
    for key in ("train", "dev", "test"):
        assert a[key].texts == b[key].texts and np.array_equal(a[key].labels, b[key].labels)
    assert a["train"].texts != c["train"].texts
    validation = load_split("rte", "validation", fake_glue)
    assert a["test"].texts == validation.texts and np.array_equal(a["test"].labels, validation.labels)
    assert a["test"].texts == c["test"].texts


@pytest.mark.parametrize("pool_size, n, sizes", [(64, 4, (3, 1)), (64, 5, (3, 2)), (64, 10, (7, 3)),
                                                 (100, 100, (75, 25)), (64, None, (48, 16))])
def test_split_train_dev_cuts_a_seeded_sample_75_25(pool_size, n, sizes):
    train, dev = split_train_dev(GLUE_TASKS["rte"], _examples(pool_size), n, seed=7)
    assert (len(train), len(dev)) == sizes
    order = np.random.default_rng(7).permutation(pool_size)
    assert train.texts[0] + dev.texts[0] == [f"s{i}" for i in order[: sum(sizes)]]
    assert np.array_equal(train.labels, np.array([int(s[1:]) % 2 for s in train.texts[0]]))


@pytest.mark.parametrize("train_size, message", [
    (5000, r"--train-size 5000 is larger than rte's training split \(64 examples\); use at most "
           r"64 or omit it for the full set\."),
    (0, r"--train-size 0 is too small .* use at least 4\."),
    (3, r"--train-size 3 is too small"),
    (-2, r"--train-size -2 is too small"),
    (2.5, r"--train-size 2\.5 is not a whole number"),
])
def test_make_splits_rejects_bad_train_sizes(fake_glue, train_size, message):
    with pytest.raises(UserError, match=message):
        make_splits("rte", train_size, seed=0, glue_dir=fake_glue)


def test_protocol_rejects_negative_seeds_and_tiny_full_sets():
    with pytest.raises(UserError, match="--seed -1 is not a non-negative integer"):
        split_train_dev(GLUE_TASKS["rte"], _examples(10), 8, seed=-1)
    with pytest.raises(UserError, match="has only 3 example"):
        split_train_dev(GLUE_TASKS["rte"], _examples(3), None, seed=0)


# ----------------------------------------------------------------------------- bad GLUE files


def _write(path: Path, columns: dict, types: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(k, (types or {}).get(k, pa.string())) for k in columns]) if types else None
    pq.write_table(pa.table(columns, schema=schema), path)


def _rte_file(root: Path, split: str = "train") -> Path:
    return root / "rte" / f"{split}-00000-of-00001.parquet"


def test_missing_folder_sub_folder_and_file_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"GLUE folder .*nope does not exist; pass --glue-dir "
                                        r"pointing at a folder laid out like nyu-mll/glue"):
        load_split("rte", "train", tmp_path / "nope")
    with pytest.raises(UserError, match="has no rte sub-folder"):
        load_split("rte", "train", tmp_path)
    write_split(tmp_path, "rte", "validation", 4)
    with pytest.raises(UserError, match=r"GLUE folder .*rte has no train-00000-of-00001\.parquet; "
                                        r"pass --glue-dir pointing at a folder laid out like "
                                        r"nyu-mll/glue \(one sub-folder per task\)\.$"):
        load_split("rte", "train", tmp_path)


def test_truncated_and_garbage_parquet_are_user_errors(tmp_path):
    path = write_split(tmp_path, "rte", "train", 16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is not a readable Parquet file .*replace it with an intact copy"):
        load_split("rte", "train", tmp_path)
    path.write_bytes(b"sentence1,sentence2,label\n")
    with pytest.raises(UserError, match="is not a readable Parquet file"):
        load_split("rte", "train", tmp_path)
    # Intact footer but damaged data pages: the error surfaces only when reading.
    path.write_bytes(data[:4] + b"\xff" * 200 + data[204:])
    with pytest.raises(UserError, match="is corrupt or truncated .*replace it with an intact copy"):
        load_split("rte", "train", tmp_path)


def test_missing_column_is_a_user_error(tmp_path):
    _write(_rte_file(tmp_path), {"sentence1": ["a b"], "label": [0]}, {"label": pa.int64()})
    with pytest.raises(UserError, match=r"has no column\(s\) sentence2 \(it has sentence1, label\)"):
        load_split("rte", "train", tmp_path)


def test_empty_split_is_a_user_error(tmp_path):
    _write(_rte_file(tmp_path), {"sentence1": [], "sentence2": [], "label": []}, {"label": pa.int64()})
    with pytest.raises(UserError, match="rte train split .* has no rows; use a split that contains examples"):
        load_split("rte", "train", tmp_path)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, -1], r"has labels -1 outside rte's class ids 0\.\.1 \(entailment, not_entailment\)"),
    ([0, 7, 1], r"has labels 7 outside rte's class ids 0\.\.1"),
    ([0, None, 1], r"has 1 missing label\(s\)"),
])
def test_out_of_range_labels_are_user_errors(tmp_path, labels, message):
    _write(_rte_file(tmp_path), {"sentence1": ["a"] * 3, "sentence2": ["b"] * 3, "label": labels},
           {"label": pa.int64()})
    with pytest.raises(UserError, match=message):
        load_split("rte", "train", tmp_path)


def test_unsigned_labels_beyond_int64_are_a_user_error(tmp_path):
    _write(_rte_file(tmp_path), {"sentence1": ["a"] * 3, "sentence2": ["b"] * 3,
                                 "label": [0, 2 ** 63, 1]}, {"label": pa.uint64()})
    with pytest.raises(UserError, match=r"has labels 9223372036854775808 outside rte's"):
        load_split("rte", "train", tmp_path)
    _write(_rte_file(tmp_path), {"sentence1": ["a"] * 2, "sentence2": ["b"] * 2,
                                 "label": [1, 0]}, {"label": pa.uint8()})
    assert load_split("rte", "train", tmp_path).labels.tolist() == [1, 0]


def test_non_integer_class_labels_and_missing_text_are_user_errors(tmp_path):
    _write(_rte_file(tmp_path), {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.5, 1.0]},
           {"label": pa.float64()})
    with pytest.raises(UserError, match="non-integer class labels"):
        load_split("rte", "train", tmp_path)
    _write(_rte_file(tmp_path), {"sentence1": ["a", None], "sentence2": ["c", "d"], "label": [0, 1]},
           {"label": pa.int64()})
    with pytest.raises(UserError, match="1 missing value.* in text column sentence1"):
        load_split("rte", "train", tmp_path)


def test_nan_regression_targets_are_user_errors(tmp_path):
    path = tmp_path / "stsb" / "train-00000-of-00001.parquet"
    _write(path, {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1.0, float("nan")]},
           {"label": pa.float32()})
    with pytest.raises(UserError, match=r"has 1 NaN or infinite regression target\(s\)"):
        load_split("stsb", "train", tmp_path)


# ----------------------------------------------------------------------------- user datasets


def test_custom_csv_with_string_labels_and_sentence_pairs(tmp_path):
    rows = [("a man eats", "a person eats", "yes"), ("it rains", "sun is out", "no"),
            ("dogs bark", "a dog barks", "yes"), ("x", "y", "maybe")] * 3
    train = tmp_path / "train.csv"
    train.write_text("first,second,gold\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    test = tmp_path / "test.csv"
    test.write_text('first,second,gold\n"1, 2",3,no\nb,c,maybe\n')
    task, splits = load_custom([train, test], ["first", "second"], "gold", task_name="para",
                               train_size=8, seed=1)
    assert task.name == "para" and task.label_names == ("maybe", "no", "yes")
    assert not task.is_regression and task.num_labels == 3
    assert task.metric_names == ("accuracy",) and task.select_metric == "accuracy"
    assert (len(splits["train"]), len(splits["dev"])) == (6, 2)
    assert splits["test"].texts == (["1, 2", "b"], ["3", "c"])  # numbers stay text
    assert splits["test"].labels.tolist() == [1, 0] and splits["test"].labels.dtype == np.int32
    for example_first, label in zip(splits["train"].texts[0], splits["train"].labels):
        assert task.label_names[label] == {a: c for a, _, c in rows}[example_first]


def test_custom_jsonl_regression_is_inferred(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"s{i}", "score": i / 4}) + "\n" for i in range(12)))
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"text": "t0", "score": 2}, {"text": "t1", "score": 0.5}]))
    task, splits = load_custom([train, test], ["text"], "score")
    assert task.is_regression and task.num_labels == 1 and task.label_names is None
    assert task.metric_names == ("pearson", "spearman") and task.select_metric == "spearman"
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == (9, 3, 2)
    assert splits["test"].labels.dtype == np.float32
    assert splits["test"].labels.tolist() == [2.0, 0.5]
    whole = tmp_path / "whole.jsonl"
    whole.write_text("".join(json.dumps({"text": f"s{i}", "score": i % 3}) + "\n" for i in range(8)))
    task, _ = load_custom([whole, whole], ["text"], "score")
    assert not task.is_regression and task.label_names == ("0", "1", "2")


def test_custom_parquet_with_integer_labels_and_explicit_regression(tmp_path):
    columns = {"review": [f"review {i}" for i in range(8)], "stars": [1, 5, 3, 5, 1, 3, 10, 5]}
    train = tmp_path / "train.parquet"
    pq.write_table(pa.table(columns), train)
    test = tmp_path / "test.tsv"
    test.write_text("review\tstars\ngood\t10\nbad\t1\n")
    task, splits = load_custom([train, test], ["review"], "stars")
    assert task.label_names == ("1", "3", "5", "10")  # numeric order, not string order
    assert splits["test"].labels.tolist() == [3, 0]
    task, splits = load_custom([train, test], ["review"], "stars", regression=True)
    assert task.is_regression and splits["test"].labels.tolist() == [10.0, 1.0]


def test_custom_dataset_user_errors(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("text,label\na,z\n")
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\na,x\nb,x\nc,x\nd,x\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    cases = [
        (([good], ["text"], "label"), r"Got 1 data file\(s\); pass the training file then "
                                      r"the test file \(then, optionally, a dev file\)"),
        (([good] * 4, ["text"], "label"), r"Got 4 data file\(s\)"),
        (([good, unseen], ["text"], "label"), r"label\(s\) z that never occur in the training file"),
        (([good, good], ["text"], "gold"), r"has no column\(s\) gold \(it has text, label\)"),
        (([good, tmp_path / "missing.csv"], ["text"], "label"), "missing.csv does not exist"),
        (([good, tmp_path / "data.xlsx"], ["text"], "label"), "unsupported extension '.xlsx'"),
        (([good, good], ["text", "label", "text"], "label"), "name one text column, or two"),
        (([good, good], ["text"], "text"), "named both as text and as label"),
        (([one_class, good], ["text"], "label"), r"only one distinct label \('x'\)"),
        (([empty, good], ["text"], "label"), "has no rows"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            load_custom(*args)
    with pytest.raises(UserError, match="non-numeric labels but the task is a regression"):
        load_custom([good, good], ["text"], "label", regression=True)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(UserError, match="is not valid JSON lines"):
        load_custom([broken, good], ["text"], "label")
    with pytest.raises(UserError, match="larger than custom's training split"):
        load_custom([good, good], ["text"], "label", train_size=10)


def test_glue_style_tsv_with_unmatched_quotes_keeps_every_row(tmp_path):
    """GLUE's TSVs are not quoted: a text may begin with a " that is never closed."""
    texts = [f'"quoted start {i}' if i % 2 == 0 else f"plain {i} \"mid\" quote" for i in range(40)]
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    task, splits = load_custom([train, train], ["sentence"], "label")
    assert len(splits["test"]) == 40
    assert splits["test"].texts == (texts,)
    assert splits["test"].labels.tolist() == [i % 2 for i in range(40)]
    # A CSV keeps its quoting: a quoted comma is part of the text.
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('text,label\n"a, b",x\nc,y\nd,x\ne,y\n')
    _, splits = load_custom([quoted, quoted], ["text"], "label")
    assert splits["test"].texts == (["a, b", "c", "d", "e"],)


@pytest.mark.parametrize("name, content, offset", [
    ("latin.csv", "text,label\ncaf\xe9,x\nna\xefve,y\nb,x\nc,y\n".encode("latin-1"), 14),
    ("header.tsv", "t\xe9xt\tlabel\na\tx\nb\ty\nc\tx\nd\ty\n".encode("latin-1"), 1),
    ("latin.jsonl", "".join(f'{{"text": "caf\xe9 {i}", "label": {i % 2}}}\n'
                            for i in range(4)).encode("latin-1"), 13),
])
def test_file_that_is_not_utf8_is_refused_with_the_conversion(tmp_path, name, content, offset):
    bad = tmp_path / name
    bad.write_bytes(content)
    good = tmp_path / "good.csv"
    good.write_text("text,label\na,x\nb,y\n")
    new = bad.with_stem(bad.stem + "-utf8")
    with pytest.raises(UserError) as info:
        load_custom([bad, good], ["text"], "label")
    assert str(info.value) == (
        f"data file {bad} is not UTF-8 text (byte {offset} is not valid UTF-8); convert it to "
        f"UTF-8 (for example iconv -f latin1 -t utf-8 {bad} > {new}) and pass the new file.")
    # The conversion it proposes makes a file that reads.
    new.write_bytes(content.decode("latin-1").encode("utf-8"))
    column = "t\xe9xt" if name == "header.tsv" else "text"
    assert len(load_custom([new, new], [column], "label")[1]["test"]) == 4


# ----------------------------------------------------------------------------- tokenisation


def test_encode_marks_segment_b_with_token_type_1(tokenizer):
    encoded = encode(tokenizer, (["the cat sat", "hello"], ["on the mat", "world again"]))
    assert len(encoded) == 2 and encoded.pad_id == tokenizer.pad_token_id
    ids, types = encoded.input_ids[0], encoded.extra["token_type_ids"][0]
    assert ids.dtype == np.int32 and types.dtype == np.int32
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    first = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    second = tokenizer("on the mat", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == [cls, *first, sep, *second, sep]
    assert types.tolist() == [0] * (len(first) + 2) + [1] * (len(second) + 1)
    single = encode(tokenizer, ["one sentence only"])
    assert set(single.extra["token_type_ids"][0].tolist()) == {0}
    assert single.input_ids[0][0] == cls and single.input_ids[0][-1] == sep


def test_encode_truncates_to_max_length(tokenizer):
    long = " ".join(["word"] * 300)
    encoded = encode(tokenizer, ([long, "short"], [long, "pair"]), max_length=64)
    assert encoded.lengths.tolist()[0] == 64 and encoded.lengths[1] < 64
    assert encoded.extra["token_type_ids"][0].sum() > 20  # both segments survive longest-first truncation
    assert len(encode(tokenizer, ([], []))) == 0


# ----------------------------------------------------------------------------- batching


def test_buckets():
    assert default_buckets(128) == (32, 64, 128)
    assert default_buckets(256) == (32, 64, 128, 256)
    assert default_buckets(100) == (32, 64, 100)
    assert default_buckets(16) == (16,)
    assert [bucket_length(n) for n in (1, 32, 33, 64, 65, 128)] == [32, 32, 64, 64, 128, 128]
    with pytest.raises(ValueError):
        bucket_length(129)
    assert [num_batches(n, 8) for n in (0, 1, 8, 9)] == [0, 1, 1, 2]
    assert num_batches(9, 8, drop_last=True) == 1


def test_batches_have_fixed_shapes_bucket_lengths_and_masked_padding(tokenizer):
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(k)) for k in rng.integers(1, 120, size=45)]
    encoded = encode(tokenizer, (texts, texts[::-1]), max_length=128)
    labels = rng.integers(0, 2, size=45)
    out = list(batches(encoded, labels, batch_size=16))
    assert len(out) == num_batches(45, 16) == 3
    seen = []
    for b, batch in enumerate(out):
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "weights"}
        width = batch["input_ids"].shape[1]
        assert width in (32, 64, 128)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert batch[key].shape == (16, width) and batch[key].dtype == np.int32
        assert batch["labels"].dtype == np.int32 and batch["weights"].dtype == np.float32
        real = int(batch["weights"].sum())
        index = np.arange(b * 16, b * 16 + real)
        assert width == bucket_length(int(encoded.lengths[index].max()))
        assert np.array_equal(batch["attention_mask"].sum(1)[:real], encoded.lengths[index])
        assert np.array_equal(batch["labels"][:real], labels[index])
        for row, i in enumerate(index):
            n = encoded.lengths[i]
            assert np.array_equal(batch["input_ids"][row, :n], encoded.input_ids[i])
            assert np.all(batch["input_ids"][row, n:] == tokenizer.pad_token_id)
            assert np.array_equal(batch["token_type_ids"][row, :n], encoded.extra["token_type_ids"][i])
        seen.extend(index)
    assert seen == list(range(45))
    last = out[-1]
    assert last["weights"].tolist() == [1.0] * 13 + [0.0] * 3
    assert np.all(last["input_ids"][13:] == last["input_ids"][0])  # filler copies a real row
    assert np.all(last["attention_mask"][13:].sum(1) > 0)


def test_length_order_batches_the_short_examples_together():
    lengths = [40, 3, 70, 3, 10, 33, 5, 64, 2, 31, 20, 9]
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    encoded = Encoded(input_ids=ids, extra={"token_type_ids": [np.zeros_like(x) for x in ids]},
                      max_length=128)
    order = length_order(encoded)
    # shortest first, ties in dataset order
    assert order.tolist() == [8, 1, 3, 6, 11, 4, 10, 9, 5, 0, 7, 2]
    labels = np.arange(len(ids))
    out = list(batches(encoded, labels, batch_size=4, order=order))
    assert [b["input_ids"].shape[1] for b in out] == [32, 32, 128]
    assert [b["input_ids"].shape[1] for b in batches(encoded, labels, batch_size=4)] == [
        128, 64, 32]  # in dataset order
    rows = np.concatenate([b["labels"][b["weights"] > 0] for b in out])
    assert rows.tolist() == order.tolist()
    assert in_dataset_order(order, rows).tolist() == list(range(12))
    with pytest.raises(ValueError, match="11 rows for 12 examples"):
        in_dataset_order(order, rows[:-1])
    for b in out:
        for row, i in enumerate(b["labels"]):
            assert np.array_equal(b["input_ids"][row, :lengths[i]], ids[i])
    with pytest.raises(ValueError, match="not both"):
        next(batches(encoded, labels, batch_size=4, order=order, shuffle_seed=1))
    for bad in (np.zeros(12, int), order.astype(float), order[None]):
        with pytest.raises(ValueError, match="permutation of the 12 examples"):
            next(batches(encoded, labels, batch_size=4, order=bad))


def test_evaluate_scores_in_dataset_order_what_it_batched_by_length(monkeypatch):
    """``evaluate`` batches by length and must put each prediction back on its example:
    a predict that reads each row's own tokens (exactly, whatever the width) gives each
    example its own score, and the metrics see them in dataset order, beside float32
    labels as the batches carry them."""
    import aa_jax.step as step

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 100, size=37)
    ids = [rng.integers(1, 1000, size=n).astype(np.int32) for n in lengths]
    encoded = Encoded(input_ids=ids, extra={"token_type_ids": [np.zeros_like(x) for x in ids]},
                      max_length=128)
    labels = rng.uniform(0, 5, size=37)  # float64, as a GLUE split gives them
    widths, seen = [], []

    def predict(trainable, frozen, batch):
        widths.append(batch["input_ids"].shape[1])
        return batch["input_ids"].sum(axis=1).astype(np.float32) + trainable

    def metrics(task, predictions, gold):
        seen.append((predictions, gold))
        return {}

    monkeypatch.setattr(step, "compute_metrics", metrics)
    step.evaluate(predict, 0.5, None, encoded, labels, get_task("stsb"), batch_size=8)
    assert widths == sorted(widths) and widths[0] < widths[-1]
    (predictions, gold), = seen
    assert np.array_equal(predictions, [x.sum() + 0.5 for x in ids])
    assert gold.dtype == np.float32 and np.array_equal(gold, labels.astype(np.float32))
    with pytest.raises(ValueError, match="split is empty"):
        step.evaluate(predict, 0.5, None, Encoded([], {}, 128), np.zeros(0),
                      get_task("stsb"), batch_size=8)


def test_batches_shuffle_deterministically_and_drop_last():
    n = 50
    encoded_ids = [np.arange(1, k + 2, dtype=np.int32) for k in range(n)]
    encoded = Encoded(input_ids=encoded_ids,
                      extra={"token_type_ids": [np.zeros_like(x) for x in encoded_ids]},
                      max_length=64)
    labels = np.arange(n, dtype=np.float64) / 10

    def order(seed, drop_last=False):
        out = list(batches(encoded, labels, batch_size=8, shuffle_seed=seed, drop_last=drop_last))
        assert all(b["labels"].dtype == np.float32 for b in out)
        return np.concatenate([np.round(b["labels"][b["weights"] > 0] * 10) for b in out]).astype(int)

    first = order(1)
    assert np.array_equal(first, order(1))
    assert not np.array_equal(first, order(2))
    assert sorted(first.tolist()) == list(range(n))
    assert np.array_equal(first, np.random.default_rng(1).permutation(n))
    dropped = order(1, drop_last=True)
    assert len(dropped) == 48 and np.array_equal(dropped, first[:48])
    widths = {b["input_ids"].shape[1] for b in batches(encoded, labels, batch_size=8, shuffle_seed=3)}
    assert widths <= {32, 64}

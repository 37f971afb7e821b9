"""Fuzzing the readers of user files: every input is either accepted or answered with a
UserError, never any other exception.

Covers architecture JSON (``Architecture.from_json``), learned architectures
(``learned.read_learned`` / ``selected_layers_from``), run configs
(``TrainConfig.from_dict``) and data files (``custom.load_custom`` and ``glue.load_split``):
hypothesis-generated values and structure-aware mutations of valid inputs, plus seeded
random byte corruption of valid files.
"""

from __future__ import annotations

import copy
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aa_jax.adapters import Architecture
from aa_jax.data import custom, glue
from aa_jax.errors import UserError
from aa_jax.learned import LEARNED_SCHEMA, read_learned, selected_layers_from
from aa_jax.config import TrainConfig

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILES = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) |
                st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


def accepts_or_user_error(fn, *args, **kwargs):
    """Calls fn; a UserError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        assert str(e).strip()
        return None


def _mutate(value, rng: random.Random, replacement):
    """A copy of a JSON tree with one node replaced, removed or given a new key."""
    value = copy.deepcopy(value)
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk(value, ())
    path = rng.choice(paths[1:] or paths)
    if not path:
        return replacement
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    action = rng.randrange(3)
    if action == 0:
        parent[path[-1]] = replacement
    elif action == 1:
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"extra_{rng.randrange(100)}"] = replacement
    else:
        parent.append(replacement)
    return value


def _corrupt_bytes(data: bytes, rng: random.Random) -> bytes:
    """Flips, deletes, inserts or truncates a few bytes."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not data:
            break
        kind = rng.randrange(4)
        i = rng.randrange(len(data))
        if kind == 0:
            data[i] = rng.randrange(256)
        elif kind == 1:
            del data[i:i + rng.randint(1, 16)]
        elif kind == 2:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del data[i:]
    return bytes(data)


# -- architectures ----------------------------------------------------------------------

VALID_ARCH = Architecture.uniform(3, "rational", switch=True).to_dict()


@FUZZ
@given(st.one_of(json_values, st.text(max_size=60)))
def test_architecture_from_json_random(value):
    text = value if isinstance(value, str) else json.dumps(value)
    arch = accepts_or_user_error(Architecture.from_json, text)
    assert arch is None or isinstance(arch, Architecture)


@FUZZ
@given(json_values, st.randoms(use_true_random=False))
def test_architecture_from_dict_mutated(replacement, rng):
    arch = accepts_or_user_error(Architecture.from_dict, _mutate(VALID_ARCH, rng, replacement))
    if arch is not None:
        assert Architecture.from_dict(arch.to_dict()) == arch


def test_architecture_from_json_deeply_nested_is_a_user_error():
    with pytest.raises(UserError):
        Architecture.from_json("[" * 100_000 + "]" * 100_000)


def _learned(depth=3, selected=(0, 2)):
    arch = Architecture.uniform(depth, "rational", switch=True)
    layers = [{"layer": i, "adapter": True, "activation": "rational",
               "switch_logits": [0.5, -0.5] if i in selected else [-0.5, 0.5],
               "switch_probs": [0.7, 0.3] if i in selected else [0.3, 0.7],
               "selected": i in selected,
               "rational": {"numerator": [0.0, 1.0, 0.5, 0.1, 0.0, 0.0],
                            "denominator": [0.1, 0.0, 0.0, 0.0]}} for i in range(depth)]
    return {"schema": LEARNED_SCHEMA, "selected_layers": list(selected), "depth": depth,
            "source": {"task": "rte", "seed": 1}, "architecture": arch.to_dict(),
            "layers": layers}


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _read_learned_file(path: Path):
    data = accepts_or_user_error(read_learned, path)
    if data is not None:
        layers = accepts_or_user_error(selected_layers_from, path, data["depth"])
        assert layers == sorted(data["selected_layers"])
        accepts_or_user_error(selected_layers_from, path, data["depth"] + 1)
        # What the architecture command prints must be readable from a valid file.
        for e in data.get("layers", []):
            assert isinstance(e["layer"], int) and isinstance(e["selected"], bool)
            if "switch_probs" in e:
                format(e["switch_probs"][0], ".3f")
    return data


def test_valid_learned_architecture_reads(scratch):
    path = scratch / "valid.json"
    path.write_text(json.dumps(_learned()))
    assert _read_learned_file(path)["selected_layers"] == [0, 2]


@FUZZ
@given(json_values, st.randoms(use_true_random=False))
def test_read_learned_mutated(scratch, replacement, rng):
    path = scratch / "mutated.json"
    path.write_text(json.dumps(_mutate(_learned(), rng, replacement)))
    _read_learned_file(path)


@FUZZ
@given(json_values)
def test_read_learned_random_json(scratch, value):
    path = scratch / "random.json"
    path.write_text(json.dumps(value))
    _read_learned_file(path)


@pytest.mark.parametrize("seed", range(60))
def test_read_learned_corrupted_bytes(scratch, seed):
    rng = random.Random(seed)
    path = scratch / f"corrupt-{seed}.json"
    path.write_bytes(_corrupt_bytes(json.dumps(_learned(), indent=1).encode(), rng))
    _read_learned_file(path)


# -- run configs ------------------------------------------------------------------------

VALID_CONFIG = TrainConfig(task="rte", method="aa", train_size=32).to_dict()


@FUZZ
@given(st.sampled_from(sorted(VALID_CONFIG)), json_values)
def test_train_config_field_replaced(field, value):
    d = dict(VALID_CONFIG, **{field: value})
    config = accepts_or_user_error(TrainConfig.from_dict, d)
    if config is not None:
        assert TrainConfig.from_dict(config.to_dict()) == config


@FUZZ
@given(json_values, st.randoms(use_true_random=False))
def test_train_config_mutated(replacement, rng):
    accepts_or_user_error(TrainConfig.from_dict, _mutate(VALID_CONFIG, rng, replacement))


@FUZZ
@given(json_values)
def test_train_config_random(value):
    accepts_or_user_error(TrainConfig.from_dict, value)


# -- data files -------------------------------------------------------------------------

def _valid_rows(n=12):
    return [{"text": f"sentence number {i}", "label": "yes" if i % 2 else "no"}
            for i in range(n)]


def _write_csv(path: Path, rows, delimiter=","):
    lines = [delimiter.join(rows[0])] + [delimiter.join(str(v) for v in r.values())
                                         for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _load_custom(train: Path, test: Path, columns=("text",), label="label"):
    result = accepts_or_user_error(custom.load_custom, [train, test], list(columns), label,
                                   train_size=None, seed=0)
    if result is not None:
        task, splits = result
        assert set(splits) == {"train", "dev", "test"}
        for split in splits.values():
            assert all(isinstance(t, str) for col in split.texts for t in col)
    return result


@pytest.fixture(scope="module")
def valid_files(scratch):
    folder = scratch / "valid"
    folder.mkdir()
    rows = _valid_rows()
    _write_csv(folder / "data.csv", rows)
    _write_csv(folder / "data.tsv", rows, "\t")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "data.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), folder / "data.parquet")
    for f in folder.iterdir():  # the valid files are valid
        assert _load_custom(f, f) is not None, f
    return folder


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("seed", range(12))
def test_load_custom_corrupted_bytes(valid_files, scratch, suffix, seed):
    rng = random.Random(seed)
    good = valid_files / f"data{suffix}"
    bad = scratch / f"corrupt-{seed}{suffix}"
    bad.write_bytes(_corrupt_bytes(good.read_bytes(), rng))
    _load_custom(bad, good)
    _load_custom(good, bad)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
@FILES
@given(data=st.binary(max_size=300))
def test_load_custom_random_bytes(scratch, suffix, data):
    path = scratch / f"random{suffix}"
    path.write_bytes(data)
    _load_custom(path, path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_load_custom_truncated_parquet(valid_files, scratch, fraction):
    good = (valid_files / "data.parquet").read_bytes()
    path = scratch / f"truncated-{fraction}.parquet"
    path.write_bytes(good[:int(len(good) * fraction)])
    assert _load_custom(path, valid_files / "data.parquet") is None


odd_cells = st.lists(st.sampled_from(list('ab ,;\t"\'\n\r\\é字\x00') +
                                     ["NaN", "1", "1.5", "-", "true", "2020-01-01", "1e999"]),
                     max_size=6).map("".join)


@FILES
@given(header=st.lists(odd_cells, min_size=1, max_size=4),
       rows=st.lists(st.lists(odd_cells, max_size=5), max_size=8),
       delimiter=st.sampled_from([",", "\t"]))
def test_load_custom_odd_csv(scratch, header, rows, delimiter):
    path = scratch / ("odd.csv" if delimiter == "," else "odd.tsv")
    path.write_text("\n".join(delimiter.join(r) for r in [header, *rows]), encoding="utf-8")
    _load_custom(path, path)
    names = [h for h in header if h]
    if names:
        _load_custom(path, path, columns=(names[0],), label=names[-1])
        _load_custom(path, path, columns=tuple(dict.fromkeys(names[:2])), label=names[-1])


@FILES
@given(rows=st.lists(st.dictionaries(st.sampled_from(["text", "label", "other"]),
                                     json_values, max_size=3), max_size=6),
       as_array=st.booleans())
def test_load_custom_odd_json(scratch, rows, as_array):
    path = scratch / ("odd.json" if as_array else "odd.jsonl")
    text = json.dumps(rows) if as_array else "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text)
    _load_custom(path, path)


def _odd_table(n: int, rng: np.random.Generator) -> pa.Table:
    """An RTE-like table whose columns may have the wrong types, nulls or odd labels."""
    def column(kind):
        if kind == "text":
            return pa.array([f"s {i}" for i in range(n)])
        if kind == "null_text":
            return pa.array([None if i % 3 == 0 else "x" for i in range(n)], pa.string())
        if kind == "int":
            return pa.array(rng.integers(-3, 4, n))
        if kind == "float":
            return pa.array(rng.standard_normal(n) * 3)
        if kind == "nan":
            return pa.array(np.full(n, np.nan))
        if kind == "bool":
            return pa.array([bool(i % 2) for i in range(n)])
        if kind == "binary":
            return pa.array([bytes([0xff, i % 256]) for i in range(n)], pa.binary())
        if kind == "list":
            return pa.array([[i] for i in range(n)])
        return pa.array([None] * n, pa.null())

    kinds = ["text", "null_text", "int", "float", "nan", "bool", "binary", "list", "null"]
    columns = {}
    for name in ("sentence1", "sentence2", "label"):
        if rng.random() < 0.9:
            columns[name] = column(rng.choice(kinds) if rng.random() < 0.5 else
                                   ("int" if name == "label" else "text"))
    columns["idx"] = pa.array(range(n))
    return pa.table(columns)


@pytest.mark.parametrize("seed", range(40))
def test_load_split_odd_and_corrupted_parquet(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "rte" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(_odd_table(int(rng.integers(0, 10)), rng), path)
    for corrupt in (False, True):
        if corrupt:
            path.write_bytes(_corrupt_bytes(path.read_bytes(), random.Random(seed)))
        for require_labels in (True, False):
            ex = accepts_or_user_error(glue.load_split, "rte", "train", tmp_path,
                                       require_labels=require_labels)
            if ex is not None:
                assert len(ex) > 0 and ex.labels.dtype == np.int32
                if require_labels:
                    assert ex.labels.min() >= 0 and ex.labels.max() <= 1
        accepts_or_user_error(glue.make_splits, "rte", 8, seed, tmp_path)


NASTY_FILES = {
    "duplicate_text.csv": "text,text,label\na,b,x\nc,d,y\ne,f,x\ng,h,y\n",
    "duplicate_label.csv": "text,label,label\na,x,x\nc,y,y\ne,x,x\ng,y,y\n",
    "huge_ints.jsonl": "".join(json.dumps({"text": "a", "label": 10**30 * (i % 2)}) + "\n"
                               for i in range(6)),
    "deep.json": "[" * 50_000 + "]" * 50_000,
    "deep.jsonl": '{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 1}\n',
    "dates.csv": "text,label\n" + "".join(f"a{i},2020-01-0{i % 2 + 1}\n" for i in range(6)),
    "mixed.jsonl": "".join(json.dumps({"text": "a", "label": v}) + "\n" for v in (1, "x", 2, 1)),
    "struct_text.json": json.dumps([{"text": {"a": 1}, "label": 1}] + [{"text": "b", "label": 0}] * 3),
    "not_objects.json": "[1, 2, 3]",
    "inf_labels.csv": "text,label\n" + "".join(f"a{i},{'inf' if i % 2 else '1.5'}\n" for i in range(6)),
    "nul_bytes.csv": "text,label\n" + "".join(f"a\x00{i},{i % 2}\n" for i in range(6)),
    "bad_utf8.csv": None,
    "empty.jsonl": "\n\n",
    "header_only.tsv": "text\tlabel\n",
}


@pytest.mark.parametrize("name", sorted(NASTY_FILES))
def test_load_custom_nasty_files(scratch, name):
    path = scratch / name
    text = NASTY_FILES[name]
    if text is None:
        path.write_bytes(b"text,label\n" + b"".join(b"\xff\xfe%d,%d\n" % (i, i % 2)
                                                   for i in range(6)))
    else:
        path.write_text(text)
    _load_custom(path, path)  # these all happen to be refused, but none may crash


@pytest.mark.parametrize("seed", range(16))
def test_load_pretrained_corrupted_checkpoint(tmp_path_factory, tiny_checkpoint, seed):
    from aa_jax.models.loader import load_pretrained

    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("corrupt-ckpt")
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    target = rng.choice(["config.json", "model.safetensors"])
    data = (folder / target).read_bytes()
    if target == "model.safetensors":  # the JSON header and its length prefix
        head = 8 + int.from_bytes(data[:8], "little")
        data = _corrupt_bytes(data[:head], rng) + data[head:]
    else:
        data = _corrupt_bytes(data, rng)
    (folder / target).write_bytes(data)
    accepts_or_user_error(load_pretrained, str(folder))

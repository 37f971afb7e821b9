"""Hostile files and odd paths: no symlink followed into a user's file, no code run from
the working directory, recorded commands that paste back exactly, tampered adapter folders
refused in one sentence."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aa_jax import checkpoint, cli, run_lock
from aa_jax.config import TrainConfig
from aa_jax.errors import UserError
from aa_jax.export import load_adapters, save_adapters
from aa_jax.model_card import reproduce_command


@pytest.fixture(autouse=True)
def any_checkout(monkeypatch):
    """The runner's tests run from the checkout as it is (a sweep's refusal of uncommitted
    changes is tested in test_provenance.py)."""
    from experiments import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "check_clean", lambda allow_dirty: None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, aa_run):
    folder = tmp_path_factory.mktemp("exported") / "adapters"
    save_adapters(folder, aa_run)
    return folder


def _copy(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def _one_sentence(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("aa-jax: error: ") and len(err.splitlines()) == 1, err
    return err


def test_a_symlinked_lock_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / run_lock.RUN_LOCK).symlink_to(victim)
    with pytest.raises(UserError, match="is a symbolic link"):
        with run_lock.hold_run(run):
            pass
    assert victim.read_text() == "keep me\n"


def test_a_lock_that_is_not_a_plain_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / run_lock.RUN_LOCK)
    with pytest.raises(UserError, match="not a plain file"):
        with run_lock.hold_run(tmp_path):
            pass


def test_a_symlinked_checkpoint_is_refused_and_what_it_points_to_kept(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"x" * 10)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "3").symlink_to(elsewhere, target_is_directory=True)
    for read_only in (False, True):
        with pytest.raises(UserError, match="symbolic link"):
            checkpoint.manager(checkpoints, read_only=read_only)
    with pytest.raises(UserError, match="symbolic link"):
        checkpoint.remove_unfinished_saves(checkpoints)
    assert (elsewhere / "data.bin").read_bytes() == b"x" * 10


def test_the_console_command_never_imports_from_the_working_directory(tmp_path):
    command = Path(sys.executable).with_name("aa-jax")
    if not command.is_file():
        pytest.skip("the aa-jax console script is not installed beside this interpreter")
    marker = tmp_path / "ran"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      f"raise SystemExit('imported json.py from the cwd')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AA_JAX_ALLOCATOR",
                                                                      "PYTHONPATH"))}
    done = subprocess.run([str(command), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: aa-jax" in done.stdout and not marker.exists()


@pytest.mark.parametrize("model", ["my models/bert", "x'; touch pwned; '", "$(touch pwned)",
                                   "a\"b `c`"])
def test_recorded_commands_paste_back_exactly(model):
    config = TrainConfig(model=model, data=[f"{model}/train.csv", "t $(x).csv"])
    words = shlex.split(reproduce_command(config))
    assert words[words.index("--model") + 1] == model
    assert words[words.index("--data") + 1] == f"{model}/train.csv,t $(x).csv"


def test_non_finite_adapter_weights_are_refused(exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    copy = _copy(exported, tmp_path)
    weights = load_file(str(copy / "adapters.safetensors"))
    name = sorted(weights)[0]
    weights[name] = np.full_like(weights[name], np.nan)
    save_file(weights, str(copy / "adapters.safetensors"))
    with pytest.raises(UserError, match=f"not finite numbers \\({name}\\)"):
        load_adapters(copy)


@pytest.mark.parametrize("field, value, named", [
    ("max_length", "128", "max_length"), ("dtype", "float16", "dtype"),
    ("pooling", "auto", "pooling"), ("selected_layers", ["1"], "selected_layers"),
    ("task", {"name": 3}, "task.name"), ("drop_first", -1, "drop_first"),
    ("base_model", {"name": "minilm", "sizes": {"hidden_size": "big"}}, "base_model.sizes"),
])
def test_adapter_configs_of_the_wrong_types_are_refused_in_one_sentence(
        exported, tmp_path, capsys, field, value, named):
    copy = _copy(exported, tmp_path)
    config = json.loads((copy / "adapter_config.json").read_text())
    config[field] = value
    (copy / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"invalid {named};"):
        load_adapters(copy)
    assert cli.main(["predict", str(copy), "--text", "a", "--text-pair", "b"]) == 2
    _one_sentence(capsys)


def test_predict_out_onto_a_folder_is_one_sentence(exported, tmp_path, capsys):
    assert cli.main(["predict", str(exported), "--text", "a", "--text-pair", "b",
                     "--out", str(tmp_path)]) == 2
    assert "is a folder; give the file" in _one_sentence(capsys)


def test_an_export_whose_folder_appears_meanwhile_leaves_it_whole(aa_run, tmp_path,
                                                                   monkeypatch):
    import aa_jax.export as export

    out = tmp_path / "adapters"
    real = export._write_weights

    def and_another_export_finishes(path, flat):  # the other export wins the race
        real(path, flat)
        out.mkdir()
        (out / "theirs.txt").write_text("whole")

    monkeypatch.setattr(export, "_write_weights", and_another_export_finishes)
    with pytest.raises(UserError, match="appeared while this export was being written"):
        save_adapters(out, aa_run)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapters"]  # no temporary left


@pytest.mark.parametrize("grid, methods", [
    ({"method": ["x/../../../ESC"]}, {"x/../../../ESC": {"method": "aa"}}),
    ({"method": ["aa"], "task": ["../rte"]}, None),
    ({"method": ["..hidden"]}, {"..hidden": {"method": "aa"}}),
    ({"method": ["aa"], "seed": ["1/2"]}, None),
    ({"method": ["a\u0000b"]}, {"a\u0000b": {"method": "aa"}}),
])
def test_sweep_names_that_would_leave_their_folders_are_refused_first(tmp_path, grid,
                                                                       methods, capsys):
    from experiments import sweep
    from experiments.grid import Sweep

    path = tmp_path / "sweeps" / "evil.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"base": {"train_size": 24}, "grid": grid,
                                **({"methods": methods} if methods else {})}))
    with pytest.raises(UserError, match="is not one plain folder name"):
        Sweep.load(path)
    work, out = tmp_path / "deep" / "work", tmp_path / "deep" / "out"
    assert sweep.main([str(path), "--work", str(work), "--out", str(out)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps"]  # nothing written


def test_a_transfer_entry_naming_a_sweep_outside_the_sweeps_folder_is_refused(tmp_path):
    from experiments import grid

    path = tmp_path / "sweeps" / "evil.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"base": {"train_size": 24}, "grid": {"method": ["aa"]},
                                "transfer": {"sweep": "../../../tmp/other"}}))
    with pytest.raises(UserError, match="is not the name of a sweep file"):
        grid.transfer_source(grid.Sweep.load(path, results=tmp_path / "r",
                                             work=tmp_path / "w"))


def test_labels_written_as_numbers_in_one_file_and_text_in_another_are_named(tmp_path):
    from aa_jax.data.custom import load_custom

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                             for i, t in enumerate("abcdefgh")))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": str(i % 2)}) + "\n"
                            for i, t in enumerate("abcd")))
    with pytest.raises(UserError, match=r"The training file .*train.jsonl stores its labels "
                                        r"as numbers but the test file .*test.jsonl as text"):
        load_custom([train, test], ["text"], "label")
    with pytest.raises(UserError, match="as text but the test file .* as numbers"):
        load_custom([test, train], ["text"], "label")


# -- generated hostile input -------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE_TEXT = st.lists(st.sampled_from(list("ab/.\\\x00 $`'\"~*\n") + ["..", "é"]),
                        max_size=12).map("".join)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats(allow_nan=True)
    | HOSTILE_TEXT, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(HOSTILE_TEXT, inner, max_size=3), max_leaves=6)
CONFIG_FIELDS = ["method", "architecture", "selected_layers", "pooling", "dtype",
                 "max_length", "drop_first", "task", "base_model", "command", "schema"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(CONFIG_FIELDS), value=ANY_JSON, out_name=HOSTILE_TEXT)
def test_any_tampered_adapter_config_is_served_or_refused_in_one_sentence(
        exported, tmp_path_factory, capsys, field, value, out_name):
    root = tmp_path_factory.mktemp("tampered")
    copy = _copy(exported, root)
    config = json.loads((copy / "adapter_config.json").read_text())
    config[field] = value
    (copy / "adapter_config.json").write_text(json.dumps(config))
    before = _files(root)
    out = root / "predictions" / (out_name.replace("/", "_").replace("\x00", "_") or "p")
    code = cli.main(["predict", str(copy), "--text", "a", "--text-pair", "b",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err
    if code == 2:
        _one_sentence_in(captured.err)
        assert _files(root) == before  # nothing written
    else:
        assert {p for p in _files(root) - before} <= {"predictions", str(out.relative_to(root))}
        for line in out.read_text().splitlines():
            json.loads(line)  # valid JSON, no NaN


def _one_sentence_in(err: str) -> None:
    err = err.strip()
    assert err.startswith("aa-jax: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(label=HOSTILE_TEXT, task=HOSTILE_TEXT, seed=st.integers(0, 99) | HOSTILE_TEXT)
def test_any_sweep_entry_loads_plain_run_names_or_is_refused(tmp_path_factory, label, task,
                                                             seed):
    from experiments import grid

    root = tmp_path_factory.mktemp("sweep")
    path = root / "evil.json"
    path.write_text(json.dumps({"base": {"train_size": 24}, "methods": {label: {"method": "aa"}},
                                "grid": {"method": [label], "task": [task], "seed": [seed]}}))
    try:
        loaded = grid.Sweep.load(path, results=root / "out", work=root / "work")
    except UserError as e:
        assert "\n" not in str(e).strip() or "Traceback" not in str(e)
    else:
        for point in loaded.points:
            name = grid.run_name(point)
            assert "/" not in name and "\x00" not in name and ".." not in name
            assert loaded.result_dir(point).parent == root / "out"
    assert _files(root) == {"evil.json"}


# -- moved data ---------------------------------------------------------------------------

@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
def test_a_run_is_evaluated_from_anywhere_and_after_its_data_moved(tmp_path, tiny_checkpoint,
                                                                   fake_glue, monkeypatch,
                                                                   capsys):
    monkeypatch.delenv("AA_JAX_GLUE_DIR", raising=False)
    here = tmp_path / "here"
    here.mkdir()
    shutil.copytree(fake_glue, here / "glue")
    monkeypatch.chdir(here)
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", "glue",
                     "--task", "rte", "--method", "baseline", "--train-size", "16",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                     "--no-progress", "--out", "run"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "run"]) == 0
    want = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(tmp_path)  # elsewhere: the recorded absolute folder is used
    assert cli.main(["eval", "here/run"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    (here / "glue").rename(tmp_path / "moved-glue")
    assert cli.main(["eval", "here/run"]) == 2
    capsys.readouterr()
    assert cli.main(["eval", "here/run", "--glue-dir", "moved-glue"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    monkeypatch.setenv("AA_JAX_GLUE_DIR", str(tmp_path / "moved-glue"))
    assert cli.main(["eval", "here/run"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert cli.main(["export", "here/run", "--out", "exported"]) == 0


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
def test_moved_data_files_are_found_and_checked(tmp_path, tiny_checkpoint, monkeypatch,
                                                capsys):
    monkeypatch.chdir(tmp_path)
    rows = [("good film", "yes"), ("bad plot", "no")] * 10
    for name, part in (("train.csv", rows[:16]), ("test.csv", rows[16:])):
        (tmp_path / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in part))
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--data", "train.csv,test.csv",
                     "--text-columns", "text", "--label-column", "label", "--method", "baseline", "--train-size", "full", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", "run"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "run"]) == 0
    want = json.loads(capsys.readouterr().out)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).rename(moved / name)
    assert cli.main(["eval", "run"]) == 2
    assert "does not exist" in _one_sentence(capsys)
    assert cli.main(["eval", "run", "--data", "moved/train.csv,moved/test.csv"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    (moved / "test.csv").write_text("text,label\nother,yes\nfilm,no\n")
    assert cli.main(["eval", "run", "--data", "moved/train.csv,moved/test.csv"]) == 2
    assert "are not the ones the run trained on" in _one_sentence(capsys)

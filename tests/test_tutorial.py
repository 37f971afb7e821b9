"""The Python API for a loop of your own: the tutorial runs as written, it uses only the
public names, and saving a run's parameters writes what `aa-jax export` writes."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import aa_jax
from aa_jax import cli

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"


def test_the_tutorial_uses_only_public_names():
    tree = ast.parse(TUTORIAL.read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "aa_jax"}
    assert used and used <= set(aa_jax.__all__), used - set(aa_jax.__all__)
    imported = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import,
                                                                       ast.ImportFrom))
                for a in node.names} | {node.module for node in ast.walk(tree)
                                        if isinstance(node, ast.ImportFrom)}
    assert not {n for n in imported if n and n.startswith("aa_jax.")}  # no internals
    assert set(aa_jax.__all__) <= set(dir(aa_jax))


def test_the_tutorial_trains_saves_loads_and_predicts(tmp_path):
    out = tmp_path / "adapters"
    done = subprocess.run([sys.executable, str(TUTORIAL), str(out)], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert float(lines[0].split()[1]) < 0.2  # six sentences, thirty steps: learned
    assert lines[-2].startswith("positive") and lines[-1].startswith("negative")
    record = json.loads((out / "adapter_config.json").read_text())
    assert record["task"]["label_names"] == ["negative", "positive"]


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
def test_a_runs_parameters_save_as_its_export(tiny_checkpoint, fake_glue, tmp_path, capsys):
    from aa_jax.checkpoint import restore_params
    from aa_jax.learned import read_learned

    run, exported, saved = tmp_path / "run", tmp_path / "exported", tmp_path / "saved"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs",
                     "2", "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--switch-lr", "0.5", "--out", str(run)]) == 0
    assert cli.main(["export", str(run), "--out", str(exported)]) == 0
    pre = aa_jax.load_pretrained(str(tiny_checkpoint))
    arch = aa_jax.Architecture.from_dict(read_learned(run)["architecture"])
    task = aa_jax.Task(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(
        (run / "result.json").read_text())["task_record"].items()})
    model, trainable, _ = aa_jax.build_classifier(pre, arch, task.num_labels,
                                                  pooling="pooler")
    params, _ = restore_params(run / "checkpoints", trainable)
    aa_jax.save_adapters(saved, params, architecture=arch, base_model=pre, task=task,
                         pooling="pooler", max_length=32, method="aa")
    assert (saved / "adapters.safetensors").read_bytes() == \
        (exported / "adapters.safetensors").read_bytes()
    a, b = (json.loads((f / "adapter_config.json").read_text()) for f in (exported, saved))
    for field in ("architecture", "selected_layers", "pooling", "dtype", "max_length",
                  "drop_first", "task", "method"):
        assert a[field] == b[field], field
    assert {k: v for k, v in a["base_model"].items() if k != "name"} == \
        {k: v for k, v in b["base_model"].items() if k != "name"}
    capsys.readouterr()
    for folder in (exported, saved):
        assert cli.main(["predict", str(folder), "--text", "a film", "--text-pair",
                         "a plot"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert json.loads(first) == json.loads(second)


def test_save_adapters_needs_what_describes_the_parameters(tmp_path):
    with pytest.raises(aa_jax.UserError, match="architecture="):
        aa_jax.save_adapters(tmp_path / "a", {"classifier": {}})
    arch = aa_jax.Architecture.uniform(2)
    with pytest.raises(aa_jax.UserError, match="base_model="):
        aa_jax.save_adapters(tmp_path / "a", {"classifier": {}}, architecture=arch)
    assert not (tmp_path / "a").exists()
    np.testing.assert_equal(aa_jax.switch_probabilities_of({}), {})

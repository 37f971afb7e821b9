"""Training: the frozen backbone, the step's purity, and every method end to end on a tiny BERT."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from aa_jax import cli
from aa_jax.data import pipeline
from aa_jax.models.loader import load_pretrained
from aa_jax.config import TrainConfig
from aa_jax.provenance import code_record
from aa_jax.run_setup import setup
from aa_jax.step import init_state, make_optimizer, make_train_step


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_pretrained(str(tiny_checkpoint))


def _first_batch(exp, size=8):
    return next(pipeline.batches(exp.encoded["train"], exp.labels["train"], size,
                                 shuffle_seed=0))


@pytest.mark.parametrize("method", ["aa", "baseline"])
def test_backbone_stays_bitwise_frozen(tiny, tiny_checkpoint, fake_glue, method):
    config = TrainConfig(task="rte", method=method, model=str(tiny_checkpoint),
                         train_size=40, glue_dir=str(fake_glue), batch_size=8)
    exp = setup(config, tiny)
    trainable, frozen = exp.trainable, exp.frozen
    before = jax.tree.map(np.array, frozen)
    tx = make_optimizer(config, 10, trainable)
    state = init_state(trainable, tx)
    step = make_train_step(exp.model, tx, exp.task.is_regression)
    batch = _first_batch(exp)
    key = jax.random.key(0)
    for _ in range(4):
        state, metrics = step(state, frozen, batch, key)
    assert np.isfinite(float(metrics["loss"]))
    for path, value in flatten_dict(frozen).items():
        np.testing.assert_array_equal(np.asarray(value), flatten_dict(before)[path],
                                      err_msg="/".join(path))
    # The trainable params did move.
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(state.trainable), jax.tree.leaves(trainable))]
    assert any(moved)
    # No optimizer array is as large as a backbone matrix (the smallest is hidden x hidden).
    hidden = tiny.config.hidden_size
    sizes = [x.size for x in jax.tree.leaves(state.opt_state)]
    biggest_trainable = max(x.size for x in jax.tree.leaves(trainable))
    assert max(sizes) <= biggest_trainable < 30522 * hidden
    frozen_paths = {"/".join(k) for k in flatten_dict(frozen)}
    assert not any("adapter" in p or "switch" in p or "classifier" in p for p in frozen_paths)
    assert any("word_embeddings" in p for p in frozen_paths)


def test_step_is_pure_same_inputs_same_outputs(tiny, tiny_checkpoint, fake_glue):
    config = TrainConfig(task="rte", method="aa", model=str(tiny_checkpoint), train_size=40,
                         glue_dir=str(fake_glue), batch_size=8)
    exp = setup(config, tiny)
    trainable, frozen = exp.trainable, exp.frozen
    tx = make_optimizer(config, 10, trainable)
    step = make_train_step(exp.model, tx, False)
    batch = _first_batch(exp)
    outs = []
    for _ in range(2):
        state, m = step(init_state(trainable, tx), frozen, batch, jax.random.key(3))
        outs.append((float(m["loss"]), jax.tree.map(np.asarray, state.trainable)))
    assert outs[0][0] == outs[1][0]
    jax.tree.map(np.testing.assert_array_equal, outs[0][1], outs[1][1])
    _, m_other = step(init_state(trainable, tx), frozen, batch, jax.random.key(4))
    assert float(m_other["loss"]) != outs[0][0]  # Gumbel noise and dropout follow the key


def _train(tmp_path, ckpt, glue, *extra):
    out = tmp_path / "_".join(a.strip("-") for a in extra[:4])
    code = cli.main(["train", "--model", str(ckpt), "--glue-dir", str(glue),
                     "--train-size", "32", "--epochs", "2", "--batch-size", "8",
                     "--max-length", "64", "--no-progress", "--out", str(out), *extra])
    assert code == 0
    return out, json.loads((out / "result.json").read_text())


METHOD_ARGS = {
    "baseline": [], "adapterdrop": ["--drop-first", "1"], "aa": [], "switch_only": [],
    "rational_only": [], "last_n": ["--last-n", "1"],
}


# cola runs by default; rte (a sentence pair) and stsb (regression) repeat the same path
# on the other input and head kinds and run with `-m slow`.
@pytest.mark.parametrize("task", [pytest.param("rte", marks=pytest.mark.slow),
                                  pytest.param("stsb", marks=pytest.mark.slow), "cola"])
def test_cli_trains_every_method(tmp_path, tiny_checkpoint, fake_glue, task, capsys):
    aa_out = None
    for method, args in METHOD_ARGS.items():
        out, result = _train(tmp_path, tiny_checkpoint, fake_glue, "--task", task,
                             "--method", method, *args)
        assert result["method"] == method and result["task"] == task
        assert set(result["test"]) == {"rte": {"accuracy"}, "stsb": {"pearson", "spearman"},
                                       "cola": {"mcc"}}[task]
        for name in ("config.json", "architecture.json", "metrics.jsonl", "result.json"):
            assert (out / name).is_file(), name
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
        if method == "aa":
            aa_out = out
        if method == "adapterdrop":  # evaluation ran only the adapters it did not drop
            assert result["selected_layers"] == [1]
    assert "test" in capsys.readouterr().out
    selected = json.loads((aa_out / "architecture.json").read_text())["selected_layers"]
    focused = ["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
               "--train-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress",
               "--task", task, "--method", "aa_focused", "--architecture", str(aa_out),
               "--out", str(tmp_path / "focused")]
    assert cli.main(focused) == 0
    result = json.loads((tmp_path / "focused" / "result.json").read_text())
    assert result["selected_layers"] == selected
    # A short AA run may switch every adapter off: AA-focused then trains the head alone
    # and says so.
    assert ("note" in result) == (not selected)


def test_aa_focused_with_no_selected_layer_trains_the_head_alone(tmp_path, tiny_checkpoint,
                                                                  fake_glue):
    arch = {"schema": "aa_jax.learned_architecture/v2", "depth": 2, "selected_layers": [],
            "source": {}, "layers": []}
    (tmp_path / "none.json").write_text(json.dumps(arch))
    out, result = _train(tmp_path, tiny_checkpoint, fake_glue, "--task", "rte", "--method",
                         "aa_focused", "--architecture", str(tmp_path / "none.json"))
    assert result["selected_layers"] == [] and result["adapter_weights"] == 0
    assert result["trainable_params"] == 32 * 2 + 2  # the classifier only
    assert "no adapter was trained" in result["note"]


def test_aa_focused_trains_only_selected_layers(tmp_path, tiny, tiny_checkpoint, fake_glue):
    arch = {"schema": "aa_jax.learned_architecture/v2", "depth": 2, "selected_layers": [1],
            "source": {}, "layers": []}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    out, result = _train(tmp_path, tiny_checkpoint, fake_glue, "--task", "rte", "--method",
                         "aa_focused", "--architecture", str(tmp_path / "arch.json"))
    assert result["selected_layers"] == [1]
    hidden, r = 32, 32 // 16
    adapter = 2 * hidden * r + r + hidden + 10  # down + up (+ biases) + rational (6 + 4)
    classifier = hidden * 2 + 2
    assert result["trainable_params"] == adapter + classifier
    assert result["adapter_weights"] == 2 * hidden * r


def test_given_layers_trains_adapters_where_told_and_results_say_what_ran(
        tiny_checkpoint, fake_glue, tmp_path, capsys):
    from aa_jax import __version__, cli

    args = ["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue), "--task",
            "rte", "--method", "given_layers", "--train-size", "24", "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "none")]) == 2
    assert "--method given_layers needs --layers" in capsys.readouterr().err
    assert cli.main(args + ["--layers", "1", "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    learned = json.loads((tmp_path / "run" / "architecture.json").read_text())
    assert result["selected_layers"] == [1]
    assert [e["activation"] for e in learned["layers"]] == [None, "rational"]
    assert not any("switch_probs" in e for e in learned["layers"])
    assert result["precision"] == "default" and result["code"] == code_record()
    assert result["code"]["version"] == f"aa_jax {__version__}"


def test_matmul_precision_highest_is_recorded(tiny_checkpoint, fake_glue, tmp_path):
    from aa_jax import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "baseline", "--train-size", "24",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                     "--no-progress", "--matmul-precision", "highest", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["precision"] == "highest"
    assert json.loads((out / "config.json").read_text())["matmul_precision"] == "highest"


def test_checkpoints_follow_the_interval_and_the_last_epoch_is_always_saved(
        tmp_path, tiny_checkpoint, fake_glue, monkeypatch):
    """On a clock where epochs end 30 s apart, ``--checkpoint-every 60`` saves epochs 2
    and 4 and always the last (5); ``--checkpoint-every 0`` saves every epoch. Saving less
    often changes nothing that is computed: the two runs write the same metrics and result."""
    from aa_jax import checkpoint
    from aa_jax import train as training

    saved = []
    real_save = checkpoint.save

    def save(mgr, epoch, *args):
        saved.append(epoch)
        real_save(mgr, epoch, *args)

    monkeypatch.setattr(checkpoint, "save", save)
    runs = {}
    for every in ("60", "0"):
        ticks = iter(range(0, 10_000, 30))  # the loop's start, then the end of each epoch
        monkeypatch.setattr(training, "_clock", lambda: next(ticks))
        saved.clear()
        out, result = _train(tmp_path, tiny_checkpoint, fake_glue, "--checkpoint-every",
                             every, "--task", "cola", "--method", "aa", "--epochs", "5")
        runs[every] = (list(saved), (out / "metrics.jsonl").read_text(), result)
        kept = sorted(int(p.name) for p in (out / "checkpoints").iterdir())
        assert kept == [4, 5]  # the last two, as checkpoints_to_keep says
    assert runs["60"][0] == [2, 4, 5]
    assert runs["0"][0] == [1, 2, 3, 4, 5]
    assert runs["60"][1] == runs["0"][1]
    for key in ("best_epoch", "dev", "test", "selected_layers"):
        assert runs["60"][2][key] == runs["0"][2][key]
    # Killed before the last save, the interval run resumes from epoch 4 and ends the same.
    out = tmp_path / "checkpoint-every_60_task_cola"
    shutil.rmtree(out / "checkpoints" / "5")
    (out / "result.json").unlink()
    ticks = iter(range(0, 10_000, 30))
    monkeypatch.setattr(training, "_clock", lambda: next(ticks))
    saved.clear()
    _, result = _train(tmp_path, tiny_checkpoint, fake_glue, "--checkpoint-every", "60",
                       "--task", "cola", "--method", "aa", "--epochs", "5")
    assert saved == [5]  # epoch 5 alone was trained again
    assert (out / "metrics.jsonl").read_text() == runs["60"][1]
    for key in ("best_epoch", "dev", "test", "selected_layers"):
        assert result[key] == runs["60"][2][key]

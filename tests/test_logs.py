"""--log-dir: TensorBoard event files that TensorBoard's own reader reads back."""

import json
import shutil

import numpy as np
import pytest

from aa_jax import cli
from aa_jax.config import TrainConfig


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_what_the_run_logged(tiny_checkpoint, fake_glue, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "tb"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--out", str(out), "--log-dir", str(logs)]) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(logs / "run")
    steps = history[-1]["step"]  # 18 training examples of 24, batches of 8: 3 per epoch
    assert steps == 6
    assert [s for s, _ in got["train/loss"]] == list(range(1, steps + 1))
    assert [s for s, _ in got["train/grad_norm"]] == list(range(1, steps + 1))
    losses = np.array([v for _, v in got["train/loss"]])
    for k, record in enumerate(history):  # the epoch means of metrics.jsonl, in float32
        assert losses[3 * k:3 * k + 3].mean() == pytest.approx(record["loss"], rel=1e-6)
        for metric, value in record["dev"].items():
            assert got[f"dev/{metric}"][k] == (record["step"], pytest.approx(value, rel=1e-6))
        for layer, p in record["switch_probs"].items():
            assert got[f"switch/layer_{layer}"][k] == (record["step"],
                                                       pytest.approx(p, rel=1e-6))
    # Linear decay to 0 over the run, no warmup: step t used lr * (1 - (t - 1) / steps).
    default = TrainConfig()
    config = json.loads((out / "config.json").read_text())
    for group, field in (("adapter", "learning_rate"), ("switch", "switch_learning_rate"),
                         ("rational", "rational_learning_rate")):
        lr = config[field]
        assert [v for _, v in got[f"lr/{group}"]] == pytest.approx(
            [lr * (1 - t / steps) for t in range(steps)], rel=1e-6)
    assert config["log_dir"] == str(logs) and default.log_dir is None


def test_the_log_folder_is_not_part_of_a_run_s_identity(tiny_checkpoint, fake_glue, tmp_path,
                                                        capsys):
    args = ["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue), "--task",
            "rte", "--method", "baseline", "--train-size", "24", "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert cli.main(args) == 0
    capsys.readouterr()
    # The finished run is the same run with a log folder: its result, not a refusal.
    assert cli.main(args + ["--log-dir", str(tmp_path / "tb")]) == 0
    assert not (tmp_path / "tb").exists()  # nothing was trained, so nothing was logged


def test_a_resumed_run_logs_each_step_once(tiny_checkpoint, fake_glue, tmp_path):
    """A run resumed from its epoch-2 checkpoint trains and logs epoch 3 again, into the
    same folder: TensorBoard keeps the new steps and drops the interrupted process's."""
    out, logs = tmp_path / "run", tmp_path / "tb"
    args = ["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
            "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs", "3",
            "--batch-size", "8", "--max-length", "32", "--no-progress",
            "--checkpoint-every", "0", "--out", str(out), "--log-dir", str(logs)]
    assert cli.main(args) == 0
    first = _scalars(logs / "run")["train/loss"]
    shutil.rmtree(out / "checkpoints" / "3")  # as if killed before epoch 3 was saved
    (out / "result.json").unlink()
    assert cli.main(args) == 0
    again = _scalars(logs / "run")["train/loss"]
    assert [s for s, _ in again] == list(range(1, 10))  # 3 steps an epoch, each once
    assert again == [(s, pytest.approx(v, rel=1e-6)) for s, v in first]

"""Data parallel training: 8 forced CPU devices give the single-device computation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Sums of a few hundred float32 terms taken in another order (the gradient's all-reduce):
# the losses (O(1)) agree to a few ulps per step; 1e-5 also covers the drift of 6 steps.
TOL = 1e-5

STEPS = """
import json, sys
import jax, numpy as np
from aa_jax.data import pipeline
from aa_jax.models.loader import load_pretrained
from aa_jax.config import TrainConfig
from aa_jax.run_setup import setup
from aa_jax.step import (data_mesh, init_state, make_optimizer, make_predict, make_train_step, replicate)
config = TrainConfig(**json.loads(sys.argv[1]))
exp = setup(config, load_pretrained(config.model))
out = {}
for name, devices in (("one", jax.devices()[:1]), ("all", jax.devices())):
    mesh = data_mesh(devices)
    tx = make_optimizer(config, 10, exp.trainable)
    state = replicate(init_state(exp.trainable, tx), mesh)
    frozen = replicate(exp.frozen, mesh)
    step = make_train_step(exp.model, tx, exp.task.is_regression, 0, mesh)
    losses = []
    for epoch in range(2):
        for batch in pipeline.batches(exp.encoded["train"], exp.labels["train"],
                                      config.batch_size, shuffle_seed=epoch):
            state, metrics = step(state, frozen, batch, jax.random.key(0))
            losses.append(float(metrics["loss"]))
    predict = make_predict(exp.model, exp.task.is_regression, 0, mesh)
    preds = [np.asarray(predict(state.trainable, frozen, b)).tolist()
             for b in pipeline.batches(exp.encoded["test"], exp.labels["test"],
                                       config.batch_size)]
    out[name] = {"devices": len(devices), "losses": losses,
                 "preds": sum(preds, []),
                 "sharded": str(state.trainable["classifier"]["kernel"].sharding)}
print(json.dumps(out))
"""


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.slow
def test_eight_devices_give_the_single_device_steps(tiny_checkpoint, fake_glue):
    config = {"task": "stsb", "method": "aa", "model": str(tiny_checkpoint), "train_size": 32,
              "batch_size": 8, "max_length": 32, "learning_rate": 1e-2,
              "glue_dir": str(fake_glue)}
    proc = subprocess.run([sys.executable, "-c", STEPS, json.dumps(config)], cwd=REPO,
                          env=_env(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    one, all_ = out["one"], out["all"]
    assert (one["devices"], all_["devices"]) == (1, 8)
    assert "NamedSharding" in all_["sharded"]
    assert len(one["losses"]) == len(all_["losses"]) == 6
    assert max(abs(a - b) for a, b in zip(one["losses"], all_["losses"])) <= TOL
    # The steps changed something: the losses are not all the same.
    assert len({round(x, 6) for x in one["losses"]}) > 1
    assert max(abs(a - b) for a, b in zip(one["preds"], all_["preds"])) <= TOL


@pytest.mark.slow
def test_the_command_trains_on_all_devices(tmp_path, tiny_checkpoint, fake_glue):
    args = ["-m", "aa_jax.cli", "train", "--model", str(tiny_checkpoint), "--glue-dir",
            str(fake_glue), "--task", "stsb", "--method", "aa", "--train-size", "32",
            "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--lr", "1e-2",
            "--no-progress"]
    histories = {}
    for devices in (1, 8):
        out = tmp_path / f"run{devices}"
        proc = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=REPO,
                              env=_env(devices), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        histories[devices] = [json.loads(line) for line in
                              (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(histories[1], histories[8]):
        assert abs(a["loss"] - b["loss"]) <= TOL
    # A batch that cannot be split over the devices is refused in one sentence.
    proc = subprocess.run([sys.executable, *args, "--batch-size", "6", "--out",
                           str(tmp_path / "odd")], cwd=REPO, env=_env(8),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "cannot be split over 8 devices; use a multiple of 8." in proc.stderr
    assert not (tmp_path / "odd").exists()

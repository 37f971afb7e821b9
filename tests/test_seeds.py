"""Several seeds as one vmapped program: each seed computes its sequential run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from aa_jax.data import pipeline
from aa_jax.models.bert import BertForSequenceClassification
from aa_jax.models.loader import load_pretrained
from aa_jax.train import (TrainConfig, init_state, make_optimizer, make_seeds_train_step,
                          make_train_step, setup, stack_runs)
base = TrainConfig(**json.loads(sys.argv[1]))
pre = load_pretrained(base.model)
seeds = (42, 7)
f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
runs = []
for seed in seeds:
    exp = setup(dataclasses.replace(base, seed=seed), pre)
    model = BertForSequenceClassification(pre.config, exp.task.num_labels, exp.architecture,
                                          dtype=jnp.float64, pooling=exp.pooling)
    runs.append((exp, model, f64(exp.trainable)))
exp0, model, _ = runs[0]
frozen = f64(exp0.frozen)
tx = make_optimizer(base, 100, runs[0][2])

def batches(exp, seed):  # one width for every batch, so that the seeds can be stacked
    for epoch in range(2):
        yield from pipeline.batches(exp.encoded["train"], exp.labels["train"],
                                    base.batch_size, shuffle_seed=seed * 100 + epoch,
                                    buckets=(base.max_length,))

keys = [jax.random.key(seed) for seed in seeds]
step = make_train_step(model, tx, True)
sequential = []
for (exp, _, trainable), seed, key in zip(runs, seeds, keys):
    state, losses = init_state(trainable, tx), []
    for batch in batches(exp, seed):
        state, metrics = step(state, frozen, batch, key)
        losses.append(float(metrics["loss"]))
    sequential.append(losses)

together = make_seeds_train_step(model, tx, True)
states = stack_runs([init_state(trainable, tx) for _, _, trainable in runs])
losses, dtype = [], None
for group in zip(*(batches(exp, seed) for (exp, _, _), seed in zip(runs, seeds))):
    states, metrics = together(states, frozen, stack_runs(list(group)), stack_runs(keys))
    losses.append(np.asarray(metrics["loss"]).tolist())
    dtype = str(metrics["loss"].dtype)
print(json.dumps({"sequential": sequential, "together": [list(x) for x in zip(*losses)],
                  "dtype": dtype}))
"""


@pytest.mark.slow
def test_seeds_together_equal_their_sequential_runs_in_float64(tiny_checkpoint, fake_glue):
    config = {"task": "stsb", "method": "aa", "model": str(tiny_checkpoint), "train_size": 32,
              "batch_size": 8, "max_length": 32, "learning_rate": 1e-2,
              "glue_dir": str(fake_glue)}
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["dtype"] == "float64"
    for sequential, together in zip(out["sequential"], out["together"]):
        assert len(sequential) == len(together) == 6
        # float64: batched and unbatched kernels differ in the last bits only.
        assert max(abs(a - b) for a, b in zip(sequential, together)) <= 1e-10
    # Each seed ran its own data, adapters and noise.
    assert out["sequential"][0] != out["sequential"][1]

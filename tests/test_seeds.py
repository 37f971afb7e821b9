"""Several seeds as one vmapped program: each seed computes its sequential run."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aa_jax import checkpoint, cli
from aa_jax import multi_seed as seeds_module
from aa_jax import train as train_module
from aa_jax.data import pipeline
from aa_jax.errors import UserError
from aa_jax.multi_seed import train_seeds
from aa_jax.config import TrainConfig
from aa_jax.train import train

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from aa_jax.data import pipeline
from aa_jax.models.loader import load_pretrained
from aa_jax.config import TrainConfig
from aa_jax.run_setup import setup
from aa_jax.step import (init_state, make_optimizer, make_seeds_train_step, make_train_step, stack_runs)
base = TrainConfig(**json.loads(sys.argv[1]))
pre = load_pretrained(base.model)
seeds = (42, 7)
f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
runs = []
for seed in seeds:
    exp = setup(dataclasses.replace(base, seed=seed), pre)
    model = pre.family.classifier(pre.config, exp.task.num_labels, exp.architecture,
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
@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet"])
def test_seeds_together_equal_their_sequential_runs_in_float64(family, tiny_checkpoint,
                                                                fake_glue):
    model = (tiny_checkpoint if family == "bert"
             else Path(__file__).parent / "reference" / f"tiny-{family}")
    config = {"task": "stsb", "method": "aa", "model": str(model), "train_size": 32,
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


# -- train_seeds against train, end to end in float64 ------------------------------------

# TrainConfig offers float32 and bfloat16 only, so the script swaps a float64 model and
# float64 params into the Experiment that setup() returns; train() and train_seeds() both
# build their runs through aa_jax.run_setup.setup, so both run in float64. It records every
# step's losses, and for the seeds-together steps how many batches were widened.
RUNS_SCRIPT = """
import copy, dataclasses, json, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from aa_jax import multi_seed as seeds_module
from aa_jax import train as training
from aa_jax.config import TrainConfig
from aa_jax.data import pipeline
from aa_jax.models.bert import BertForSequenceClassification
from aa_jax.models.loader import load_pretrained
from aa_jax.multi_seed import train_seeds

base = TrainConfig(**json.loads(sys.argv[1]))
case, root = sys.argv[2], Path(sys.argv[3])
seeds = json.loads(sys.argv[4]) if len(sys.argv) > 4 else [42, 7]
dropout, float64 = case != "widened", case != "float32"
pre = load_pretrained(base.model)
bert_config = copy.deepcopy(pre.config)
if not dropout:
    bert_config.hidden_dropout_prob = bert_config.attention_probs_dropout_prob = 0.0
f64 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)
real_setup = training.setup

def setup64(config, pretrained=None, **kwargs):
    exp = real_setup(config, pretrained, **kwargs)
    if not float64:
        return exp
    model = BertForSequenceClassification(bert_config, exp.task.num_labels, exp.architecture,
                                          dtype=jnp.float64, pooling=exp.pooling)
    return dataclasses.replace(exp, model=model, trainable=f64(exp.trainable),
                               frozen=f64(exp.frozen))

losses = {"sequential": [], "together": []}
widened, dtypes = [0] * len(seeds), set()
real_step, real_seeds_step = training.make_train_step, seeds_module.make_seeds_train_step

def make_step(*args, **kwargs):
    step, run = real_step(*args, **kwargs), []
    losses["sequential"].append(run)
    def recorded(state, frozen, batch, rng):
        state, metrics = step(state, frozen, batch, rng)
        run.append(float(metrics["loss"]))
        return state, metrics
    return recorded

def make_seeds_step(*args, **kwargs):
    step = real_seeds_step(*args, **kwargs)
    def recorded(states, frozen, batches, rngs):
        states, metrics = step(states, frozen, batches, rngs)
        losses["together"].append(np.asarray(metrics["loss"]).tolist())
        dtypes.add(str(metrics["loss"].dtype))
        width = batches["input_ids"].shape[-1]
        for i, mask in enumerate(batches["attention_mask"]):
            own = pipeline.bucket_length(int(mask.sum(-1).max()),
                                         pipeline.default_buckets(base.max_length))
            widened[i] += own < width
        return states, metrics
    return recorded

training.setup = seeds_module.setup = setup64
training.make_train_step, seeds_module.make_seeds_train_step = make_step, make_seeds_step
configs = [dataclasses.replace(base, seed=seed) for seed in seeds]
together = train_seeds(configs, [root / "together" / str(s) for s in seeds], False, pre)
sequential = [training.train(c, root / "sequential" / str(c.seed), False, pre) for c in configs]
print(json.dumps({"losses": {"sequential": losses["sequential"],
                             "together": [list(x) for x in zip(*losses["together"])]},
                  "widened": widened, "results": {"together": together,
                                                     "sequential": sequential},
                  "dtypes": sorted(dtypes)}))
"""


def _write_csv(path: Path, n: int, seed: int) -> None:
    """Sentence pairs with scores; one example in 16 is long (over 32 tokens), so that with
    --max-length 64 the seeds' batches of a step often fall in different buckets."""
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "fine", "poor", "great", "awful", "film", "song", "day", "plan"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "score"])
        for i in range(n):
            length = 30 if i % 16 == 0 else int(rng.integers(3, 8))
            w.writerow([" ".join(rng.choice(words, length)), " ".join(rng.choice(words, 4)),
                        round(float(rng.uniform(0, 5)), 1) + 0.05])


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    _write_csv(root / "train.csv", 64, 0)
    _write_csv(root / "test.csv", 16, 1)
    return [str(root / "train.csv"), str(root / "test.csv")]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dropout", "widened", "widened_dropout"])
def test_train_seeds_equals_sequential_train_in_float64(case, tmp_path, tiny_checkpoint,
                                                        pair_data):
    """dropout: the backbone's dropout on, every batch in one bucket (--max-length 32), so
    every seed draws exactly its sequential run's noise (dropout, Gumbel switches).
    widened: dropout off, --max-length 64, so that steps pad some seeds' batches to a
    wider bucket; the padding is masked and must change nothing. AdapterDrop's draws.
    widened_dropout: both: a token's dropout mask does not depend on the padding."""
    config = {"method": "aa", "model": str(tiny_checkpoint), "train_size": 32, "epochs": 2,
              "batch_size": 8, "max_length": 32, "learning_rate": 1e-2, "data": pair_data,
              "text_columns": ["a", "b"], "label_column": "score"}
    if case.startswith("widened"):
        config.update(method="adapterdrop", adapterdrop_max=2, drop_first=1, max_length=64)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    proc = subprocess.run([sys.executable, "-c", RUNS_SCRIPT, json.dumps(config), case,
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["dtypes"] == ["float64"]
    if case.startswith("widened"):  # each seed's batch really was padded at some steps
        assert min(out["widened"]) >= 1 and sum(out["widened"]) >= 3
    else:
        assert out["widened"] == [0, 0]
    losses = out["losses"]
    assert len(losses["sequential"]) == len(losses["together"]) == 2
    for sequential, together in zip(losses["sequential"], losses["together"]):
        assert len(sequential) == len(together) == 6  # 24 examples in batches of 8, 2 epochs
        assert max(abs(a - b) for a, b in zip(sequential, together)) <= 1e-10
    assert losses["sequential"][0] != losses["sequential"][1]
    for together, sequential in zip(out["results"]["together"], out["results"]["sequential"]):
        assert together["seeds_together"] == [42, 7]
        for key in ("best_epoch", "selected_layers", "examples", "trainable_params"):
            assert together[key] == sequential[key], key
        for split in ("dev", "test"):
            assert together[split].keys() == sequential[split].keys()
            for metric, value in sequential[split].items():
                assert abs(together[split][metric] - value) <= 1e-10, (split, metric)


@pytest.mark.slow
def test_minilm_seeds_together_equal_one_by_one_in_float32(tmp_path, glue_dir):
    """MiniLM on real SST-2 (100 examples, AA, the cpu-v1 protocol's rates), 5 seeds x 2
    epochs: trained together on widened batches with dropout on, each seed follows its
    one-by-one run. float32: the vmapped kernels sum in another order, a few ulps
    (1.2e-7 relative) per operation; 1e-5 on losses of about 0.7 bounds that drift."""
    seeds = [42, 92, 111, 245, 651]
    config = {"task": "sst2", "method": "aa", "model": "minilm", "train_size": 100,
              "epochs": 2, "glue_dir": str(glue_dir), "learning_rate": 3e-3,
              "switch_learning_rate": 1.5, "rational_learning_rate": 0.3}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", RUNS_SCRIPT, json.dumps(config), "float32",
                           str(tmp_path), json.dumps(seeds)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["dtypes"] == ["float32"] and sum(out["widened"]) >= 1
    for sequential, together in zip(out["losses"]["sequential"], out["losses"]["together"],
                                    strict=True):
        assert len(sequential) == len(together) == 6  # 75 examples in batches of 32, 2 epochs
        assert max(abs(a - b) for a, b in zip(sequential, together)) <= 1e-5
    for together, sequential in zip(out["results"]["together"], out["results"]["sequential"]):
        for key in ("best_epoch", "selected_layers", "test"):
            assert together[key] == sequential[key], key


# -- float32: run directories, resume, the command line ---------------------------------

SEEDS = [42, 92, 111]
EPOCHS = 3
RESULT_KEYS = ("best_epoch", "selected_layers", "trainable_params", "adapter_weights",
               "examples", "select_metric", "pooling", "seed")
# A seeds-together run against its sequential run, in float32. The vmapped kernels sum in
# another order, which moves a value by a few ulps (1.2e-7 relative) per step. Per-epoch
# mean losses: over 9 Adam steps of a few hundred parameters the drift measured here stays
# below 1e-7 relative; 1e-5 leaves room for other CPUs' kernels, and the same relative
# bound holds each prediction. Pearson: the tiny random model predicts nearly a constant
# (the predictions' spread is 2.5e-4 of their size), so a prediction's last-bit rounding
# is 2.4e-4 of the spread, and Pearson moves by up to ~1e-4 (4e-5 measured). Spearman
# depends on the order of the predictions, and two predictions closer than the drift may
# swap (one swap of 24 moves it by up to 0.02): it is checked on the predictions of the
# best epoch, whose order may differ only between predictions closer than the drift.
LOSS_RTOL = 1e-5
METRIC_TOL = {"pearson": 1e-3}


@pytest.fixture(scope="module")
def base_config(tiny_checkpoint, fake_glue):
    """STS-B at lr 1e-2, so that every epoch visibly changes the dev scores; every epoch
    checkpointed, so that an interruption can stop a group at any epoch."""
    return TrainConfig(task="stsb", method="aa", model=str(tiny_checkpoint), train_size=32,
                       epochs=EPOCHS, batch_size=8, max_length=32, learning_rate=1e-2,
                       glue_dir=str(fake_glue), checkpoint_every=0)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from aa_jax.models.loader import load_pretrained

    return load_pretrained(str(tiny_checkpoint))


def _configs(base):
    return [dataclasses.replace(base, seed=seed) for seed in SEEDS]


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base_config, tiny):
    """Three seeds trained together, and each trained alone with train()."""
    root = tmp_path_factory.mktemp("seeds")
    together = [root / "together" / f"seed-{s}" for s in SEEDS]
    sequential = [root / "sequential" / f"seed-{s}" for s in SEEDS]
    train_seeds(_configs(base_config), together, progress=False, pretrained=tiny)
    for config, out in zip(_configs(base_config), sequential):
        train(config, out, progress=False, pretrained=tiny)
    return {"together": together, "sequential": sequential}


def _predictions(run_dir: Path, pretrained) -> dict[str, np.ndarray]:
    """The dev and test predictions of a run's best epoch, padding left out."""
    from aa_jax.run_setup import load_run
    from aa_jax.step import make_predict

    exp, params, _ = load_run(run_dir, pretrained)
    predict = make_predict(exp.model, exp.task.is_regression, exp.drop_first)
    out = {}
    for split in ("dev", "test"):
        batches = list(pipeline.batches(exp.encoded[split], exp.labels[split],
                                        exp.config.batch_size))
        preds = np.concatenate([np.asarray(predict(params, exp.frozen, b)) for b in batches])
        keep = np.concatenate([b["weights"] for b in batches]) != 0
        out[split] = preds[keep].astype(np.float64)
    return out


def _assert_same_order_up_to_drift(got: np.ndarray, want: np.ndarray) -> None:
    """``got`` is ``want`` up to the float32 drift, and any two predictions in another
    order are closer than twice that drift."""
    assert got == pytest.approx(want, rel=LOSS_RTOL, abs=0)
    drift = np.max(np.abs(got - want))
    swapped = np.sign(got[:, None] - got[None, :]) != np.sign(want[:, None] - want[None, :])
    gaps = np.abs(want[:, None] - want[None, :])[swapped]
    assert np.all(gaps <= 2 * drift), (gaps.max(), drift)


def _assert_same_run(got: Path, want: Path, exact: bool, pretrained=None) -> None:
    a, b = _result(got), _result(want)
    assert {k: a[k] for k in RESULT_KEYS} == {k: b[k] for k in RESULT_KEYS}
    assert (got / "architecture.json").is_file()
    ha, hb = _history(got), _history(want)
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb] == list(range(1, EPOCHS + 1))
    for x, y in [(a["dev"], b["dev"]), (a["test"], b["test"])] + [
            (ra["dev"], rb["dev"]) for ra, rb in zip(ha, hb)]:
        assert x.keys() == y.keys()
        for metric in x:
            if exact:
                assert x[metric] == y[metric], metric
            elif metric in METRIC_TOL:
                assert abs(x[metric] - y[metric]) <= METRIC_TOL[metric], metric
    rtol = 0 if exact else LOSS_RTOL
    assert [r["loss"] for r in ha] == pytest.approx([r["loss"] for r in hb], rel=rtol, abs=0)
    if not exact:
        preds_got, preds_want = _predictions(got, pretrained), _predictions(want, pretrained)
        for split in ("dev", "test"):
            _assert_same_order_up_to_drift(preds_got[split], preds_want[split])


@pytest.mark.slow
def test_run_dirs_match_sequential_runs_in_float32(reference, tiny, capsys):
    for got, want, seed in zip(reference["together"], reference["sequential"], SEEDS):
        _assert_same_run(got, want, exact=False, pretrained=tiny)
        result = _result(got)
        assert result["seed"] == seed and result["seeds_together"] == SEEDS
        assert result["train_seconds"] == pytest.approx(
            result["group_train_seconds"] / len(SEEDS), abs=0.01)
        assert result["setup_and_test_seconds"] > 0
        assert "seeds_together" not in _result(want)
        # The same checkpoint format as train(): eval reads it ...
        capsys.readouterr()
        assert cli.main(["eval", str(got)]) == 0
        assert json.loads(capsys.readouterr().out) == {"dev": result["dev"],
                                                       "test": result["test"]}
        names = sorted(p.name for p in (got / "checkpoints").iterdir())
        assert names == [str(EPOCHS - 1), str(EPOCHS)]
    # Each seed sampled its own data and noise.
    losses = [[r["loss"] for r in _history(d)] for d in reference["together"]]
    assert losses[0] != losses[1] != losses[2]


class Interrupt(Exception):
    pass


def _interrupt_at_save(monkeypatch, n: int) -> None:
    """Stops training just before the n-th checkpoint save, as a kill would."""
    real, count = checkpoint.save, [0]

    def save(*args, **kwargs):
        count[0] += 1
        if count[0] == n:
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)


def _count_epochs(monkeypatch) -> list[int]:
    """The shuffle seeds of the training epochs that run from now on."""
    real, trained = pipeline.batches, []

    def batches(*args, **kwargs):
        if kwargs.get("shuffle_seed") is not None:
            trained.append(kwargs["shuffle_seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "batches", batches)
    return trained


@pytest.mark.slow
def test_interrupted_seeds_resume_together(reference, base_config, tiny, tmp_path,
                                           monkeypatch):
    outs = [tmp_path / f"seed-{s}" for s in SEEDS]
    with monkeypatch.context() as m:
        # Epochs 1 and 2 saved for all three seeds; stopped before epoch 3's first save.
        _interrupt_at_save(m, 2 * len(SEEDS) + 1)
        with pytest.raises(Interrupt):
            train_seeds(_configs(base_config), outs, progress=False, pretrained=tiny)
    assert not any(checkpoint.is_complete(out) for out in outs)
    assert len(_history(outs[0])) == 3  # the history ran ahead of the last checkpoint
    trained = _count_epochs(monkeypatch)
    train_seeds(_configs(base_config), outs, progress=False, pretrained=tiny)
    assert sorted(trained) == sorted(train_module.shuffle_seed(s, 3) for s in SEEDS)
    # Resumed as the same program from the same states: the uninterrupted run, exactly.
    for got, want in zip(outs, reference["together"]):
        _assert_same_run(got, want, exact=True)
        assert _result(got)["seeds_together"] == SEEDS


@pytest.mark.slow
def test_seeds_at_different_epochs_resume_apart(reference, base_config, tiny, tmp_path,
                                                monkeypatch):
    outs = [tmp_path / f"seed-{s}" for s in SEEDS]
    with monkeypatch.context() as m:
        # Seed 42 saved epoch 2; seeds 92 and 111 stopped at epoch 1.
        _interrupt_at_save(m, len(SEEDS) + 2)
        with pytest.raises(Interrupt):
            train_seeds(_configs(base_config), outs, progress=False, pretrained=tiny)
    trained = _count_epochs(monkeypatch)
    results = train_seeds(_configs(base_config), outs, progress=False, pretrained=tiny)
    # 92 and 111 resumed together from epoch 2; 42 alone (train()) from epoch 3.
    assert sorted(trained) == sorted([train_module.shuffle_seed(42, 3)] + [
        train_module.shuffle_seed(s, e) for s in (92, 111) for e in (2, 3)])
    assert "seeds_together" not in results[0]
    assert results[1]["seeds_together"] == results[2]["seeds_together"] == [92, 111]
    for got, want in zip(outs, reference["together"]):
        _assert_same_run(got, want, exact=False, pretrained=tiny)
    # Finished runs are returned as they are.
    again = train_seeds(_configs(base_config), outs, progress=False, pretrained=tiny)
    assert again == results


def test_a_diverged_seed_stops_and_the_others_finish(base_config, tiny, tmp_path,
                                                    monkeypatch):
    real = train_module._check_finite

    def check_finite(losses, grad_norms, state, epoch, mgr):
        if "seed-92" in str(mgr.directory) and epoch == 2:  # as if its loss became NaN
            raise UserError("Training diverged at step 6 (epoch 2).")
        return real(losses, grad_norms, state, epoch, mgr)

    monkeypatch.setattr(train_module, "_check_finite", check_finite)
    configs = [dataclasses.replace(c, epochs=2) for c in _configs(base_config)[:2]]
    outs = [tmp_path / f"seed-{c.seed}" for c in configs]
    with pytest.raises(UserError, match="Training diverged at step 6"):
        train_seeds(configs, outs, progress=False, pretrained=tiny)
    assert checkpoint.is_complete(outs[0]) and not checkpoint.is_complete(outs[1])
    assert len(_history(outs[0])) == 2 and len(_history(outs[1])) == 1
    assert sorted(p.name for p in (outs[1] / "checkpoints").iterdir()) == ["1"]


def test_train_seeds_refuses_what_it_cannot_train_together(base_config, tmp_path,
                                                           monkeypatch):
    configs = _configs(base_config)
    outs = [tmp_path / str(s) for s in SEEDS]
    other = [configs[0], dataclasses.replace(configs[1], epochs=5, learning_rate=1e-3)]
    with pytest.raises(UserError, match="differ in epochs, learning_rate"):
        train_seeds(other, outs[:2])
    with pytest.raises(UserError, match="Seed 42 is given more than once"):
        train_seeds([configs[0], configs[0]], outs[:2])
    with pytest.raises(UserError, match="Several seeds would write to the run directory"):
        train_seeds(configs[:2], [outs[0], outs[0]])
    monkeypatch.setattr(seeds_module, "data_mesh", lambda devices=None: object())
    with pytest.raises(UserError, match="data parallel and seeds-together training are not "
                       "combined"):
        train_seeds(configs, outs)
    assert not any(out.exists() for out in outs)


def test_shared_backbone_stacks_only_what_the_seeds_do_not_share():
    shared = np.ones((3, 2), np.float32)
    frozen = [{"bert": {"w": shared, "pooler": np.full(2, float(i))}} for i in range(3)]
    tree, axes = seeds_module.shared_backbone(frozen)
    assert tree["bert"]["w"] is shared and axes == {"bert": {"w": None, "pooler": 0}}
    np.testing.assert_array_equal(tree["bert"]["pooler"], [[0, 0], [1, 1], [2, 2]])
    assert seeds_module.shared_backbone(frozen[:1])[1] is None


def test_widen_pads_like_the_pipeline():
    batch = {"input_ids": np.array([[101, 7, 102]], np.int32),
             "token_type_ids": np.array([[0, 1, 1]], np.int32),
             "attention_mask": np.ones((1, 3), np.int32),
             "labels": np.array([1], np.int32), "weights": np.ones(1, np.float32)}
    wide = pipeline.widen(batch, 5, pad_id=9)
    np.testing.assert_array_equal(wide["input_ids"], [[101, 7, 102, 9, 9]])
    np.testing.assert_array_equal(wide["token_type_ids"], [[0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(wide["attention_mask"], [[1, 1, 1, 0, 0]])
    assert wide["labels"] is batch["labels"] and pipeline.widen(batch, 3) is batch
    with pytest.raises(ValueError):
        pipeline.widen(batch, 2)


# -- the command line -------------------------------------------------------------------

def test_cli_seeds_writes_one_run_dir_per_seed(tmp_path, tiny_checkpoint, fake_glue, capsys):
    out = tmp_path / "runs"
    code = cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--seeds", "42,92", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    for seed in (42, 92):
        result = _result(out / f"seed-{seed}")
        assert result["seed"] == seed and result["seeds_together"] == [42, 92]
        assert json.loads((out / f"seed-{seed}" / "config.json").read_text())["seed"] == seed
        assert sum(f"seed {seed}): test accuracy" in line and
                   str(out / f"seed-{seed}") in line for line in lines) == 1
    assert len(lines) == 3


def test_cli_seeds_default_run_dirs(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train_seeds(configs, outs, progress=True, pretrained=None):
        calls.append(([c.seed for c in configs], [str(o) for o in outs]))
        return [{"task": "rte", "method": "aa", "model": "minilm", "train_size": 100,
                 "seed": c.seed, "test": {"accuracy": 0.5}, "best_epoch": 1,
                 "selected_layers": [], "trainable_params": 1, "adapter_weights": 0,
                 "train_seconds": 1.0} for c in configs]

    monkeypatch.setattr(seeds_module, "train_seeds", fake_train_seeds)
    assert cli.main(["train", "--task", "rte", "--seeds", "7, 3", "--no-progress"]) == 0
    assert calls == [([7, 3], ["runs/rte-aa-minilm-100-7", "runs/rte-aa-minilm-100-3"])]


@pytest.mark.parametrize("value, message", [
    ("", "comma-separated list"), ("42,,92", "comma-separated list"),
    ("42,x", "comma-separated list"), ("4.2", "comma-separated list"),
    ("42,-1", "comma-separated list"), ("42,92,42", "lists seed 42 more than once"),
])
def test_cli_refuses_bad_seeds(value, message, capsys):
    assert cli.main(["train", "--seeds", value, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("aa-jax: error: --seeds")
    assert len(err.strip().splitlines()) == 1


def test_cli_seed_and_seeds_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--seed", "1", "--seeds", "2,3"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_seeds_stop_before_training_when_one_run_directory_is_in_use(base_config, tiny,
                                                                     tmp_path, monkeypatch):
    import lock_holder
    from aa_jax import run_lock

    configs = [dataclasses.replace(c, epochs=1) for c in _configs(base_config)[:2]]
    outs = [tmp_path / f"seed-{c.seed}" for c in configs]
    holder = lock_holder.hold_in_subprocess(outs[1] / ".lock")
    try:
        monkeypatch.setattr(seeds_module, "make_seeds_train_step",
                            lambda *a, **k: pytest.fail("trained a run directory in use"))
        with pytest.raises(run_lock.Busy, match=rf"^The run directory {outs[1]} is in use by "
                           rf"process {holder.pid} \(it holds "):
            train_seeds(configs, outs, progress=False, pretrained=tiny)
        assert not (outs[0] / "checkpoints").exists()
    finally:
        lock_holder.stop(holder)
    # The first seed's lock was given back: another process can take it.
    lock_holder.stop(lock_holder.hold_in_subprocess(outs[0] / ".lock"))

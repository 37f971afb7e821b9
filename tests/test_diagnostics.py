"""The diagnostics of a run: the learning-rate warm-up, the rationals' starting function,
and what ``metrics.jsonl`` records per epoch (gradient norms per group, the rationals'
inputs and shapes), measured without changing what training computes."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from aa_jax import cli
from aa_jax.adapters import Architecture
from aa_jax.config import TrainConfig
from aa_jax.data import pipeline
from aa_jax.diagnostics import rational_coefficients
from aa_jax.errors import UserError
from aa_jax.learned import learned_architecture
from aa_jax.methods import LEARNING_RATES
from aa_jax.models.head import model_inputs
from aa_jax.models.loader import load_pretrained
from aa_jax.params import merge
from aa_jax.rational import init_coefficients, rational, rational_denominator
from aa_jax.run_setup import build_classifier, run_keys, setup
from aa_jax.step import (init_state, learning_rate_schedule, make_optimizer, make_train_step,
                         warmup_steps)

GROUPS = {"adapter", "head", "rational", "switch"}
FIELDS = {"input_min", "input_max", "numerator_norm", "denominator_norm", "output_min",
          "output_max", "denominator_min"}


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_pretrained(str(tiny_checkpoint))


def _config(tiny_checkpoint, fake_glue, **kw):
    return TrainConfig(**{"task": "stsb", "method": "aa", "model": str(tiny_checkpoint),
                          "train_size": 24, "glue_dir": str(fake_glue), "batch_size": 8,
                          "max_length": 32, **kw})


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- warm-up ----------------------------------------------------------------------------

def test_warmup_rises_then_decays_and_zero_keeps_the_released_schedule():
    # 10 steps, 20% warm-up: 2 steps up from 0, then 8 down to 0.
    assert warmup_steps(10, 0.2) == 2 and warmup_steps(10, 0.0) == 0
    assert warmup_steps(10, 0.01) == 1  # at least one step
    got = [float(learning_rate_schedule(1.0, 10, 0.2)(s)) for s in range(12)]
    want = [0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0, 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    released = optax.linear_schedule(0.3, 0.0, 10)
    assert [float(learning_rate_schedule(0.3, 10)(s)) for s in range(12)] == \
        [float(released(s)) for s in range(12)]


def test_warmup_makes_the_first_update_zero_and_the_event_log_follows_it(tmp_path):
    trainable = {"classifier": {"kernel": np.ones((2, 1), np.float32),
                                "bias": np.zeros(1, np.float32)}}
    grads = jax.tree.map(np.ones_like, trainable)
    for warmup, moves in ((0.0, True), (0.5, False)):
        tx = make_optimizer(TrainConfig(warmup=warmup), 4, trainable)
        updates, _ = tx.update(grads, tx.init(trainable), trainable)
        assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates)) == moves
    from aa_jax.logs import EventLog

    config = TrainConfig(warmup=0.25)
    log = EventLog(tmp_path, "run", config, 8, LEARNING_RATES)
    schedule = learning_rate_schedule(config.learning_rate, 8, 0.25)
    assert [log.learning_rate("adapter", s) for s in range(9)] == pytest.approx(
        [float(schedule(s)) for s in range(9)], rel=1e-6, abs=1e-12)
    log.close()


# -- the rationals' starting function ---------------------------------------------------

def test_rational_init_starts_every_rational_at_the_named_fit_and_travels(
        tiny, tiny_checkpoint, fake_glue):
    for init in ("one", "relu"):
        exp = setup(_config(tiny_checkpoint, fake_glue, rational_init=init), tiny)
        assert exp.architecture.rational_init == init
        want = init_coefficients(init, "A")
        found = rational_coefficients(exp.trainable)
        assert sorted(found) == [0, 1]
        for c in found.values():
            np.testing.assert_array_equal(c["numerator"], np.asarray(want[0], np.float32))
            np.testing.assert_array_equal(c["denominator"], np.asarray(want[1], np.float32))
    # The learned architecture carries it, and a model rebuilt from it (an export) starts
    # from the same coefficients.
    learned = learned_architecture(exp.trainable, exp.architecture, exp.source)
    assert learned["architecture"]["rational_init"] == "relu"
    rebuilt = Architecture.from_dict(learned["architecture"])
    _, trainable, _ = build_classifier(tiny, rebuilt, 1, pooling=exp.pooling)
    for c in rational_coefficients(trainable).values():
        np.testing.assert_array_equal(c["numerator"], np.asarray(want[0], np.float32))


def test_an_old_config_without_the_new_fields_loads_with_the_released_defaults():
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("rational_init", "warmup")}
    config = TrainConfig.from_dict(old)
    assert config.rational_init == "one" and config.warmup == 0.0


@pytest.mark.parametrize("change, message", [
    ({"warmup": 1.0}, r"^--warmup must be a fraction of the run's steps, at least 0 and "
                      r"below 1, got 1\.0\.$"),
    ({"warmup": -0.1}, r"^--warmup must be .* got -0\.1\.$"),
    ({"warmup": float("nan")}, r"^--warmup must be .* got nan\.$"),
    ({"warmup": True}, r"^--warmup must be .* got True\.$"),
    ({"warmup": "0.1"}, r"^--warmup must be .* got '0\.1'\.$"),
    ({"rational_init": "cubic"}, r"^Unknown --rational-init 'cubic'; choose one of: one, "
                                 r"identity, relu, .*\.$"),
    ({"rational_init": None}, r"^Unknown --rational-init None; choose one of: .*\.$"),
])
def test_the_config_refuses_a_bad_warmup_or_rational_init_in_one_sentence(change, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(TrainConfig(), **change).validate()


def test_the_flags_set_the_fields(capsys):
    args = cli.build_parser().parse_args(["train", "--rational-init", "gelu", "--warmup",
                                          "0.1"])
    from aa_jax.flags import config_from_args

    config = config_from_args(args)
    assert (config.rational_init, config.warmup) == ("gelu", 0.1)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--rational-init", "cubic"])
    assert "--rational-init" in capsys.readouterr().err


# -- what the step measures -------------------------------------------------------------

def _step_inputs(tiny, tiny_checkpoint, fake_glue, scan):
    config = _config(tiny_checkpoint, fake_glue)
    exp = setup(config, tiny)
    model, trainable, frozen = build_classifier(tiny, exp.architecture, 1,
                                                pooling=exp.pooling, scan=scan,
                                                key=run_keys(config.seed)[0])
    batch = next(pipeline.batches(exp.encoded["train"], exp.labels["train"], 8,
                                  shuffle_seed=0))
    tx = make_optimizer(config, 10, trainable)
    return model, trainable, frozen, batch, tx


@pytest.fixture(scope="module")
def unrolled(tiny, tiny_checkpoint, fake_glue):
    return _step_inputs(tiny, tiny_checkpoint, fake_glue, scan=False)


KEY = 1


def _two_steps(model, trainable, frozen, batch, tx):
    """(each step's metrics, the final trainable params and optimizer state) of two
    steps on one batch, on the host."""
    step = make_train_step(model, tx, True)
    state, metrics = init_state(trainable, tx), []
    for _ in range(2):
        state, m = step(state, frozen, batch, jax.random.key(KEY))
        metrics.append(jax.tree.map(np.asarray, m))
    return metrics, jax.tree.map(np.asarray, (state.trainable, state.opt_state))


@pytest.fixture(scope="module")
def observed(unrolled):
    return _two_steps(*unrolled)


def test_the_step_measures_what_enters_each_rational(unrolled, observed, tiny,
                                                     tiny_checkpoint, fake_glue):
    model, trainable, frozen, batch, tx = unrolled
    metrics = observed[0][0]
    # The step's forward pass (step 0 folded into the key), with every adapter's
    # down-projection (the rational's input) captured.
    dropout_key, gumbel_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(KEY), 0),
                                                  3)
    _, state = model.apply({"params": merge(trainable, frozen)}, **model_inputs(model, batch),
                           deterministic=False, rngs={"dropout": dropout_key,
                                                      "gumbel": gumbel_key},
                           capture_intermediates=lambda m, _: m.name == "down",
                           mutable=["intermediates"])
    encoder = state["intermediates"]["bert"]["encoder"]
    assert sorted(metrics["input_ranges"]) == [0, 1]
    for layer, got in metrics["input_ranges"].items():
        slot = encoder[f"layer_{layer}"]["output"]["slot"]["adapter"]
        z = np.asarray(slot["down"]["__call__"][0])
        sown = np.asarray(slot["rational"]["input_range"][0])
        np.testing.assert_array_equal(sown, [z.min(), z.max()])
        np.testing.assert_allclose(got, [z.min(), z.max()], rtol=1e-6)
    norms = {k: float(v) for k, v in metrics["grad_norms"].items()}
    assert set(norms) == GROUPS and all(v > 0 for v in norms.values())
    assert np.sqrt(sum(v ** 2 for v in norms.values())) == pytest.approx(
        float(metrics["grad_norm"]), rel=1e-6)
    # The scanned encoder (its layers stacked) measures the same.
    model_s, trainable_s, frozen_s, _, tx_s = _step_inputs(tiny, tiny_checkpoint, fake_glue,
                                                           scan=True)
    _, scanned = make_train_step(model_s, tx_s, True)(init_state(trainable_s, tx_s),
                                                      frozen_s, batch, jax.random.key(KEY))
    assert sorted(scanned["input_ranges"]) == [0, 1]
    for layer, got in scanned["input_ranges"].items():
        np.testing.assert_allclose(np.asarray(got), metrics["input_ranges"][layer],
                                   rtol=1e-5)


def test_measuring_changes_nothing_the_step_computes(unrolled, observed, monkeypatch):
    from aa_jax import step as step_module

    monkeypatch.setattr(step_module, "has_rationals", lambda architecture: False)
    monkeypatch.setattr(step_module, "step_measurements", lambda grads, intermediates: {})
    blind = _two_steps(*unrolled)
    assert "grad_norms" not in blind[0][0] and "input_ranges" in observed[0][0]
    assert [m["loss"].tobytes() for m in blind[0]] == \
        [m["loss"].tobytes() for m in observed[0]]
    for a, b in zip(jax.tree.leaves(blind[1]), jax.tree.leaves(observed[1]), strict=True):
        assert a.tobytes() == b.tobytes()


# -- what metrics.jsonl records ---------------------------------------------------------

def test_an_aa_run_records_gradient_norms_and_its_rationals(aa_run, tiny):
    from aa_jax import checkpoint
    from aa_jax.run_setup import load_run

    history = _history(aa_run)
    assert len(history) == 2
    for record in history:
        assert set(record["grad_norms"]) == GROUPS
        for norms in record["grad_norms"].values():
            assert set(norms) == {"mean", "max"} and 0 < norms["mean"] <= norms["max"]
        assert sorted(record["rationals"]) == ["0", "1"]
        for entry in record["rationals"].values():
            assert set(entry) == FIELDS
            assert entry["input_min"] < entry["input_max"]
            assert entry["output_min"] <= entry["output_max"]
            assert entry["denominator_min"] >= 1.0  # version A: Q = 1 + sum |b_k| |x|^k
    # The last epoch's shapes, measured again from its checkpoint's coefficients over the
    # recorded input range (rounded to 6 digits, hence the tolerance).
    exp = load_run(aa_run, tiny)[0]
    last, _ = checkpoint.restore_params(aa_run / "checkpoints", exp.trainable, "params")
    for layer, c in rational_coefficients(last).items():
        entry = history[-1]["rationals"][str(layer)]
        x = np.linspace(entry["input_min"], entry["input_max"], 1001, dtype=np.float32)
        r = np.asarray(rational(x, c["numerator"], c["denominator"], "A"))
        q = np.asarray(rational_denominator(x, c["denominator"], "A"))
        assert entry["numerator_norm"] == pytest.approx(np.linalg.norm(c["numerator"]),
                                                        rel=1e-5)
        assert entry["denominator_norm"] == pytest.approx(
            np.linalg.norm(c["denominator"]), rel=1e-5)
        assert [entry["output_min"], entry["output_max"], entry["denominator_min"]] == \
            pytest.approx([r.min(), r.max(), q.min()], rel=1e-5)


def test_a_baseline_run_records_gradient_norms_and_no_rationals(tmp_path, tiny_checkpoint,
                                                                fake_glue):
    out = tmp_path / "baseline"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "stsb", "--method", "baseline", "--train-size", "24",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                     "--warmup", "0.5", "--rational-init", "relu", "--no-progress",
                     "--out", str(out)]) == 0
    (record,) = _history(out)
    assert set(record["grad_norms"]) == {"adapter", "head"} and "rationals" not in record
    config = json.loads((out / "config.json").read_text())
    assert (config["warmup"], config["rational_init"]) == (0.5, "relu")


def test_seeds_trained_together_record_what_each_records_alone(tmp_path, tiny,
                                                               tiny_checkpoint, fake_glue):
    from aa_jax.multi_seed import train_seeds
    from aa_jax.train import train

    base = _config(tiny_checkpoint, fake_glue, epochs=1, checkpoint_every=0)
    configs = [dataclasses.replace(base, seed=s) for s in (1, 2)]
    together = [tmp_path / "together" / str(c.seed) for c in configs]
    train_seeds(configs, together, progress=False, pretrained=tiny)
    train(configs[1], tmp_path / "alone", progress=False, pretrained=tiny)
    (got,), (want,) = _history(together[1]), _history(tmp_path / "alone")
    assert _history(together[0])[0]["grad_norms"] != got["grad_norms"]  # its own data
    # Up to the rounding of batched kernels and of the 6 digits recorded.
    for key in ("grad_norms", "rationals"):
        flat_got, flat_want = flatten_dict(got[key]), flatten_dict(want[key])
        assert flat_got.keys() == flat_want.keys()
        for path, value in flat_want.items():
            assert flat_got[path] == pytest.approx(value, rel=1e-4), path

"""Figure 3's record of what enters each rational (experiments/rational_inputs.py),
checked against the range the rationals themselves sow (aa_jax.diagnostics)."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from aa_jax import cli
from aa_jax.data import pipeline
from aa_jax.diagnostics import input_ranges
from aa_jax.learned import read_learned
from aa_jax.models.head import model_inputs
from aa_jax.params import merge
from aa_jax.run_setup import load_run
from experiments.rational_inputs import EDGES, rational_inputs


REFERENCE = Path(__file__).parent / "reference"


@pytest.fixture(scope="module", params=["bert", pytest.param("roberta", marks=pytest.mark.slow),
                                        pytest.param("mpnet", marks=pytest.mark.slow)])
def rational_run(request, tmp_path_factory, tiny_checkpoint, fake_glue):
    """A 1-epoch run with a rational adapter in every layer, per family."""
    model = tiny_checkpoint if request.param == "bert" else REFERENCE / f"tiny-{request.param}"
    out = tmp_path_factory.mktemp("runs") / f"rational_only-{request.param}"
    assert cli.main(["train", "--model", str(model), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "rational_only", "--train-size", "24",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "32",
                     "--no-progress", "--out", str(out)]) == 0
    return out


def _sown_ranges(run_dir):
    """{layer: (min, max)} over every token (padding too) of the training examples, as the
    rationals sow it: the record's values, real tokens only, lie inside."""
    exp, params, _ = load_run(run_dir)
    model = exp.model
    lo, hi = {}, {}
    for batch in pipeline.batches(exp.encoded["train"], exp.labels["train"],
                                  exp.config.batch_size):
        _, state = model.apply({"params": merge(params, exp.frozen)},
                               **model_inputs(model, batch), deterministic=True,
                               mutable=["intermediates"])
        for layer, (a, b) in input_ranges(state["intermediates"]).items():
            lo[layer] = min(lo.get(layer, np.inf), float(a))
            hi[layer] = max(hi.get(layer, -np.inf), float(b))
    return exp, {layer: (lo[layer], hi[layer]) for layer in lo}


def _real_tokens(exp):
    return sum(len(ids) for ids in exp.encoded["train"].input_ids)  # unpadded


def test_every_layer_of_a_rational_run_is_recorded_inside_the_sown_range(rational_run):
    record = rational_inputs(rational_run)
    exp, sown = _sown_ranges(rational_run)
    depth = exp.pretrained.config.num_hidden_layers
    assert sorted(int(k) for k in record["layers"]) == list(range(depth)) == sorted(sown)
    bottleneck = {v.shape[-1] for path, v in flatten_dict(exp.trainable).items()
                  if path[-2:] == ("down", "kernel")}
    assert len(bottleneck) == 1
    bottleneck = bottleneck.pop()
    for key, layer in record["layers"].items():
        # Every bottleneck unit at every real token, once.
        assert layer["values"] == _real_tokens(exp) * bottleneck
        total = sum(layer["counts"]) + layer["below"] + layer["above"]
        assert total == pytest.approx(1.0, abs=1e-6 * (len(EDGES) + 2))  # 6-digit rounding
        lo, hi = sown[int(key)]
        occupied = np.flatnonzero(layer["counts"])
        assert EDGES[occupied[0]] <= hi and EDGES[occupied[-1] + 1] >= lo
        assert lo - 1e-5 <= layer["mean"] <= hi + 1e-5
        assert 0 < layer["std"] <= (hi - lo) / 2 + 1e-5  # no spread wider than the range


def test_an_aa_run_is_recorded_at_the_layers_its_switches_kept(tmp_path, tiny_checkpoint,
                                                               fake_glue):
    # At the released switch rate the tiny random model's switches barely move and may keep
    # no layer; at 5.0 they commit (as in the sweep's resume test).
    out = tmp_path / "aa"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--train-size", "24", "--epochs", "3",
                     "--batch-size", "8", "--max-length", "32", "--switch-lr",
                     "5.0", "--no-progress", "--out", str(out)]) == 0
    kept = sorted(read_learned(out)["selected_layers"])
    assert kept, "the test needs a run that keeps a layer"
    record = rational_inputs(out)
    assert sorted(int(k) for k in record["layers"]) == kept
    json.dumps(record, allow_nan=False)

"""IA3, the third adapter kind: against Hugging Face peft, with every method, exported."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import cli
from aa_jax.adapters import Architecture, adapter_weight_count
from aa_jax.methods import METHODS
from aa_jax.models.bert import BertModel, in_layout
from aa_jax.params import param_groups

REFERENCE = Path(__file__).parent / "reference" / "minilm_peft_ia3_reference.npz"
# peft's float32 torch against XLA's float32: the same function, rounded differently
# through six layers (the AdapterHub, Hugging Face and LoRA parity tests use this bound).
TOL = 1e-4
# Where each of peft's four vectors per layer sits in aa_jax's tree.
PATHS = {"key": ("attention", "self", "ia3", "key"),
         "value": ("attention", "self", "ia3", "value"),
         "attention_output": ("attention", "output", "ia3", "input"),
         "ffn": ("output", "ia3", "input")}


def test_ia3_matches_peft_on_minilm(minilm):
    ref = np.load(REFERENCE)
    depth = minilm.config.num_hidden_layers
    flat = dict(flatten_dict(minilm.params))
    for i in range(depth):
        for name, path in PATHS.items():
            flat[("encoder", f"layer_{i}") + path] = jnp.asarray(ref[f"layer_{i}/{name}"])
    params = unflatten_dict(flat)
    inputs = [jnp.asarray(ref[k], jnp.int32)
              for k in ("input_ids", "token_type_ids", "attention_mask")]
    real = ref["attention_mask"].astype(bool)
    for scan in (True, False):
        model = BertModel(minilm.config, Architecture.uniform(depth, "relu", adapter="ia3"),
                          scan=scan)
        variables = {"params": in_layout(params, model)}
        assert set(flatten_dict(variables["params"])) == set(flatten_dict(jax.eval_shape(
            model.init, jax.random.key(0), *inputs)["params"]))  # every vector, no other
        last, _ = model.apply(variables, *inputs)
        err = np.max(np.abs(np.asarray(last)[real] - ref["last_hidden_state"][real]))
        assert err < TOL, err
    # The IA3 vectors change the output by far more than the tolerance.
    assert np.max(np.abs(ref["last_hidden_state"] - ref["plain_last_hidden_state"])[real]) \
        > 1000 * TOL


def test_ia3_starts_as_the_pretrained_model_and_counts_its_weights(minilm):
    depth, c = minilm.config.num_hidden_layers, minilm.config
    arch = METHODS["aa"].architecture(depth, adapter="ia3")
    model = BertModel(c, arch)
    ids = jnp.ones((2, 8), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    groups = param_groups({"bert": params})
    vectors = {p: v for p, v in flatten_dict({"bert": params}).items()
               if groups[p] == "adapter"}
    assert all(np.all(np.asarray(v) == 1.0) for v in vectors.values())  # ones: no change
    assert sum(v.size for v in vectors.values()) == adapter_weight_count(
        c.hidden_size, arch, c.intermediate_size)[0] == depth * (3 * c.hidden_size
                                                                 + c.intermediate_size)
    assert sorted(set(groups.values())) == ["adapter", "frozen", "switch"]
    plain = BertModel(c, Architecture.none(depth))
    frozen = {k: v for k, v in flatten_dict(params).items() if groups[("bert",) + k] == "frozen"}
    want, _ = plain.apply({"params": unflatten_dict(frozen)}, ids)
    got, _ = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("method", ["aa", pytest.param("aa_topk", marks=pytest.mark.slow)])
def test_switched_ia3_trains_selects_and_exports(method, tiny_checkpoint, fake_glue, tmp_path,
                                                 capsys):
    out, export = tmp_path / "run", tmp_path / "export"
    extra = ["--top-k", "1"] if method == "aa_topk" else []
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", method, "--adapter", "ia3", *extra,
                     "--train-size", "24", "--epochs", "2", "--batch-size", "8",
                     "--max-length", "32", "--no-progress", "--switch-lr", "0.5",
                     "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    learned = json.loads((out / "architecture.json").read_text())
    assert learned["architecture"]["adapter"] == "ia3"
    assert result["selected_layers"] == learned["selected_layers"]
    assert all("switch_probs" in layer for layer in learned["layers"])
    if method == "aa_topk":
        assert len(result["selected_layers"]) == 1
    assert cli.main(["export", str(out), "--out", str(export)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", str(export)]) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert cli.main(["predict", str(export), "--text", "a film", "--text-pair", "a plot"]) == 0

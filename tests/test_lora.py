"""LoRA, the second adapter kind: against Hugging Face peft, and with every method."""

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

REFERENCE = Path(__file__).parent / "reference" / "minilm_peft_lora_reference.npz"
# peft's float32 torch against XLA's float32: the same function, rounded differently
# through six layers (the AdapterHub and Hugging Face parity tests use the same bound).
TOL = 1e-4


def _lora_architecture(depth, rank, alpha, **kw):
    return Architecture.uniform(depth, "relu", adapter="lora",
                                options={"rank": rank, "alpha": alpha}, **kw)


def test_lora_matches_peft_on_minilm(minilm):
    ref = np.load(REFERENCE)
    depth = minilm.config.num_hidden_layers
    rank, alpha = int(ref["rank"]), float(ref["alpha"])
    flat = dict(flatten_dict(minilm.params))
    for i in range(depth):
        for proj in ("query", "value"):
            for w in ("a", "b"):
                flat[("encoder", f"layer_{i}", "attention", "self", "lora", proj, w)] = \
                    jnp.asarray(ref[f"layer_{i}/{proj}/{w}"])
    params = unflatten_dict(flat)
    inputs = [jnp.asarray(ref[k], jnp.int32)
              for k in ("input_ids", "token_type_ids", "attention_mask")]
    real = ref["attention_mask"].astype(bool)
    for scan in (True, False):
        model = BertModel(minilm.config, _lora_architecture(depth, rank, alpha), scan=scan)
        last, _ = model.apply({"params": in_layout(params, model)}, *inputs)
        err = np.max(np.abs(np.asarray(last)[real] - ref["last_hidden_state"][real]))
        assert err < TOL, err
    # The LoRA changes the output by far more than the tolerance.
    assert np.max(np.abs(ref["last_hidden_state"] - ref["plain_last_hidden_state"])[real]) > 1


def test_lora_parameters_have_roles_and_counts(minilm):
    depth, hidden = minilm.config.num_hidden_layers, minilm.config.hidden_size
    arch = METHODS["aa"].architecture(depth, adapter="lora", options={"rank": 4})
    model = BertModel(minilm.config, arch)
    params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    groups = param_groups({"bert": params})
    by_group = {}
    for path, group in groups.items():
        by_group.setdefault(group, []).append("/".join(path))
    assert sorted(by_group) == ["adapter", "frozen", "switch"]  # no rational, no bottleneck
    assert all("/attention/self/lora/" in p for p in by_group["adapter"])
    assert by_group["switch"] == ["bert/encoder/selection/logits"]  # the selection's
    lora_weights = sum(np.prod(flatten_dict(params)[tuple(p.split("/")[1:])].shape)
                       for p in by_group["adapter"])
    assert adapter_weight_count(hidden, arch) == (lora_weights, 0) == (depth * 4 * hidden * 4, 0)


def test_aa_with_lora_trains_selects_layers_and_exports(tiny_checkpoint, fake_glue, tmp_path,
                                                        capsys):
    out, export = tmp_path / "run", tmp_path / "export"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--adapter", "lora", "--lora-rank",
                     "4", "--lora-alpha", "8", "--train-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--switch-lr", "0.5", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    learned = json.loads((out / "architecture.json").read_text())
    assert learned["architecture"]["adapter"] == "lora"
    assert result["selected_layers"] == learned["selected_layers"]
    assert all("switch_probs" in layer for layer in learned["layers"])
    assert result["adapter_weights"] == 2 * 4 * 32 * 4  # 2 layers, q and v, a and b, width 32
    assert cli.main(["export", str(out), "--out", str(export)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", str(export)]) == 0
    assert json.loads(capsys.readouterr().out) == want


@pytest.mark.parametrize("method", [m for m in METHODS
                                    if not METHODS[m].reads_learned_layers])
def test_every_method_builds_with_lora(method):
    layers = [1, 3] if METHODS[method].reads_given_layers else None
    arch = METHODS[method].architecture(4, last_n=2, adapter="lora", selected_layers=layers,
                                        top_k=2)
    assert arch.adapter == "lora" and arch.adapter_layers

"""Exported AA models: the switches resolved, the same predictions as the AA run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import cli
from aa_jax.adapters import Architecture
from aa_jax.export import static_architecture, static_params
from aa_jax.models.bert import BertForSequenceClassification, BertModel, in_layout
from aa_jax.models.loader import load_pretrained
from aa_jax.switch import ADAPTER, IDENTITY
from aa_jax.run_setup import init_params
from aa_jax.params import merge, stack_layers_like, unstack_layers


def test_static_model_predicts_what_the_switched_model_predicts(tiny_checkpoint):
    pre = load_pretrained(str(tiny_checkpoint))
    arch = Architecture.uniform(2, "rational", switch=True)
    model = BertForSequenceClassification(pre.config, 3, arch)
    trainable, frozen = init_params(model, jax.random.key(0), pre.params)
    # Pretrained-like LayerNorms: with scale 1 and bias 0 the identity branch
    # LN(LN(r) + r) would equal LN(r), since LN ignores a positive affine map of r.
    frozen = unflatten_dict({k: (v + 0.3 * jax.random.normal(jax.random.key(i), v.shape)
                                 if "LayerNorm" in k else v)
                             for i, (k, v) in enumerate(flatten_dict(frozen).items())})
    # Layer 0 picks the adapter, layer 1 the identity; perturb every adapter so that both
    # branches differ from the pretrained layer.
    flat = flatten_dict(unstack_layers(trainable))  # per layer, to set each layer's switch
    for path, value in flat.items():
        if path[-1] == "logits":  # the selection's, one row per layer
            logits = np.zeros((2, 2), np.float32)
            logits[0, ADAPTER] = logits[1, IDENTITY] = 1.0
            flat[path] = jnp.asarray(logits)
        elif "adapter" in path and "rational" not in path:
            flat[path] = value + 0.05 * jax.random.normal(jax.random.key(len(path)), value.shape)
    trainable = stack_layers_like(unflatten_dict(flat), trainable)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 2000, (4, 12)), jnp.int32)
    mask = jnp.ones_like(ids).at[0, 9:].set(0)
    switched, _ = model.apply({"params": merge(trainable, frozen)}, ids, None, mask)

    static = static_architecture(arch, [0])
    assert [s.describe() for s in static.layers] == ["rational", "x"]
    kept = static_params(trainable, arch, [0])
    names = {"/".join(k) for k in flatten_dict(kept)}
    assert not any("selection" in n for n in names)
    assert any("layer_0/output/slot/adapter" in n for n in names)
    assert not any("layer_1/output/slot/adapter" in n for n in names)
    exported = BertForSequenceClassification(pre.config, 3, static)
    frozen = unstack_layers(frozen)  # per layer, then in each model's own layout
    got, _ = exported.apply({"params": in_layout(merge(kept, frozen), exported)}, ids, None,
                            mask)
    # The same operations in another program: equal up to float32 rounding.
    np.testing.assert_allclose(np.asarray(got), np.asarray(switched), rtol=0, atol=1e-6)
    # The encoders agree too (hidden states are O(1): float32 rounding of a few ops), and
    # the identity branch is not the pretrained layer: an encoder without it differs.
    plain = Architecture(layers=(static.layers[0], Architecture.none(1).layers[0]))
    hidden = {}
    for name, a, p in (("switched", arch, unstack_layers(trainable)), ("static", static, kept),
                       ("plain", plain, kept)):
        encoder = BertModel(pre.config, a)
        last, _ = encoder.apply({"params": in_layout(merge(p, frozen)["bert"], encoder)}, ids,
                                None, mask)
        hidden[name] = np.asarray(last)
    np.testing.assert_allclose(hidden["static"], hidden["switched"], rtol=0, atol=1e-5)
    assert np.max(np.abs(hidden["plain"] - hidden["switched"])) > 0.1


def test_export_then_eval_gives_the_run_s_metrics(aa_run, tmp_path, capsys):
    export_dir = tmp_path / "exported"
    assert cli.main(["export", str(aa_run), "--out", str(export_dir)]) == 0
    record = json.loads((export_dir / "adapter_config.json").read_text())
    learned = json.loads((aa_run / "architecture.json").read_text())
    assert record["selected_layers"] == learned["selected_layers"]
    assert not any(layer["switch"] for layer in record["architecture"]["layers"])
    capsys.readouterr()
    assert cli.main(["eval", str(aa_run)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", str(export_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == want
    # An export is written once: a second export into the same folder is refused.
    assert cli.main(["export", str(aa_run), "--out", str(export_dir)]) == 2
    assert "already exists" in capsys.readouterr().err

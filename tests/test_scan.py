"""The scanned encoder against the unrolled one, and the two parameter layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax.run_setup import init_params
from aa_jax.methods import METHODS
from aa_jax.models.bert import (BertForSequenceClassification, BertModel, encoder_segments,
                                segments)
from aa_jax.models.loader import with_backbone
from aa_jax.params import (layer_params, merge, param_role, segments_of, stack_layers,
                           unstack_layers)

# Both compute the same float32 operations on the same values; XLA may order or fuse
# them differently inside a scan, which changes results by float32 rounding only.
TOL = 1e-5


def _architecture(name, depth):
    return METHODS[name].architecture(depth, selected_layers=[1, 3, 4], last_n=3, top_k=2)


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, 5000, (3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [9], [5]]), jnp.int32)
    return ids, jnp.zeros_like(ids), mask


@pytest.mark.parametrize("method", list(METHODS))
def test_scanned_equals_unrolled_on_minilm(minilm, method):
    depth = minilm.config.num_hidden_layers
    arch = _architecture(method, depth)
    ids, tt, mask = _inputs()
    unrolled = BertForSequenceClassification(minilm.config, 2, arch, scan=False,
                                             pooling="mean")
    scanned = BertForSequenceClassification(minilm.config, 2, arch, scan=True,
                                            pooling="mean")
    params = with_backbone(unrolled.init(jax.random.key(0), ids)["params"], minilm.params)
    # Switch logits that pick the adapter in some layers and the identity in others.
    rng = np.random.default_rng(1)
    params = unflatten_dict({k: jnp.asarray(rng.normal(0, 1, v.shape), v.dtype)
                             if k[-1] == "logits" else v
                             for k, v in flatten_dict(params).items()})
    stacked = stack_layers(params, encoder_segments(scanned))
    assert segments_of(stacked) == segments(arch)
    drops = [None, jnp.int32(2)] if METHODS[method].adapterdrop else [None]
    real = np.asarray(mask, bool)
    for drop in drops:
        # The hidden states of every real token, and the head's logits.
        want = BertModel(minilm.config, arch, scan=False).apply(
            {"params": params["bert"]}, ids, tt, mask, adapter_drop=drop)[0]
        got = BertModel(minilm.config, arch, scan=True).apply(
            {"params": stacked["bert"]}, ids, tt, mask, adapter_drop=drop)[0]
        np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=0,
                                   atol=TOL)
        want = unrolled.apply({"params": params}, ids, tt, mask, adapter_drop=drop)[0]
        got = scanned.apply({"params": stacked}, ids, tt, mask, adapter_drop=drop)[0]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=TOL)


@pytest.mark.parametrize("method, adapter", [("aa", "seq_bn"), ("adapterdrop", "seq_bn"),
                                             ("last_n", "seq_bn"), ("aa", "lora")])
def test_scanned_and_unrolled_draw_the_same_noise_in_training(minilm, method, adapter):
    """Dropout masks and Gumbel noise come from per-layer keys (layer_keys), so a training
    forward pass and its gradient agree between the layouts, noise included."""
    depth = minilm.config.num_hidden_layers
    arch = METHODS[method].architecture(depth, selected_layers=[1, 3, 4], last_n=3, top_k=2,
                                        adapter=adapter)
    ids, tt, mask = _inputs()
    unrolled = BertForSequenceClassification(minilm.config, 2, arch, scan=False,
                                             pooling="mean")
    scanned = unrolled.clone(scan=True)
    params = with_backbone(unrolled.init(jax.random.key(0), ids)["params"], minilm.params)
    stacked = stack_layers(params, encoder_segments(scanned))
    rngs = {"dropout": jax.random.key(7), "gumbel": jax.random.key(8)}
    drop = jnp.int32(2) if METHODS[method].adapterdrop else None

    def loss(model, p):
        logits = model.apply({"params": p}, ids, tt, mask, deterministic=False,
                             adapter_drop=drop, rngs=rngs)[0]
        return jnp.sum(logits ** 2), logits

    (_, want), want_grad = jax.value_and_grad(lambda p: loss(unrolled, p), has_aux=True)(params)
    (_, got), got_grad = jax.value_and_grad(lambda p: loss(scanned, p), has_aux=True)(stacked)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=TOL)
    # Without the shared keys the masks differ and so do the logits, by far more than TOL.
    other = unrolled.apply({"params": params}, ids, tt, mask, deterministic=False,
                           adapter_drop=drop, rngs={**rngs, "dropout": jax.random.key(9)})[0]
    assert np.max(np.abs(np.asarray(other) - np.asarray(want))) > 100 * TOL
    got_grad = flatten_dict(unstack_layers(got_grad))
    for path, g in flatten_dict(want_grad).items():
        if path[-1] == "logits" or "adapter" in path or "lora" in path or path[0] == "classifier":
            scale = max(1.0, float(np.max(np.abs(np.asarray(g)))))
            np.testing.assert_allclose(np.asarray(got_grad[path]), np.asarray(g), rtol=0,
                                       atol=TOL * scale, err_msg=str(path))


@pytest.mark.parametrize("method, adapter", [(m, "seq_bn") for m in METHODS]
                         + [("aa", "lora")])
def test_a_seed_starts_from_the_same_weights_scanned_or_unrolled(minilm, method, adapter):
    """init_params draws with the unrolled model and stacks, so the layout a run trains in
    (scanned on accelerators, unrolled on the CPU) does not change its initial weights."""
    depth = minilm.config.num_hidden_layers
    arch = METHODS[method].architecture(depth, selected_layers=[1, 3, 4], last_n=3, top_k=2,
                                        adapter=adapter)
    unrolled = BertForSequenceClassification(minilm.config, 2, arch, scan=False,
                                             pooling="pooler")
    scanned = unrolled.clone(scan=True)
    key = jax.random.key(42)
    want = [flatten_dict(t) for t in init_params(unrolled, key, minilm.params)]
    got = init_params(scanned, key, minilm.params)
    # Stacked as the scanned model lays its params out, leaf for leaf ...
    ids, tt, mask = _inputs()
    layout = jax.eval_shape(lambda k: scanned.init(k, ids), key)["params"]
    assert jax.tree.map(lambda x: (x.shape, x.dtype), merge(*got)) == jax.tree.map(
        lambda x: (x.shape, x.dtype), layout)
    assert segments_of(got[1]) == segments(arch)
    # ... with the unrolled draws, bit for bit ...
    for want_tree, got_tree in zip(want, got):
        got_flat = flatten_dict(unstack_layers(got_tree))
        assert set(got_flat) == set(want_tree)
        for path, value in want_tree.items():
            np.testing.assert_array_equal(np.asarray(got_flat[path]), np.asarray(value),
                                          err_msg=str(path))
    # ... so both models compute the same logits from them.
    np.testing.assert_allclose(
        np.asarray(scanned.apply({"params": merge(*got)}, ids, tt, mask)[0]),
        np.asarray(unrolled.apply({"params": merge(*[unflatten_dict(t) for t in want])},
                                  ids, tt, mask)[0]), rtol=0, atol=TOL)
    # The draws are random: another key gives other adapter weights.
    other = flatten_dict(init_params(unrolled, jax.random.key(43), minilm.params)[0])
    adapters = [p for p in want[0] if "encoder" in p]
    assert adapters and any(not np.array_equal(other[p], want[0][p]) for p in adapters)


def test_the_layouts_convert_exactly_both_ways(minilm):
    arch = _architecture("last_n", minilm.config.num_hidden_layers)  # two runs: 0-2, 3-5
    model = BertForSequenceClassification(minilm.config, 2, arch, scan=True)
    stacked = stack_layers({"bert": minilm.params}, encoder_segments(model))
    assert sorted(stacked["bert"]["encoder"]) == ["layers_0_2", "layers_3_5"]
    back = flatten_dict(unstack_layers(stacked))
    for path, value in flatten_dict({"bert": minilm.params}).items():
        np.testing.assert_array_equal(np.asarray(back[path]), np.asarray(value))
    assert set(layer_params(stacked)) == set(range(6))


@pytest.mark.parametrize("path, group, layers, stacked", [
    ("bert/encoder/layers_0_5/output/slot/adapter/down/kernel", "adapter", range(6), True),
    ("bert/encoder/layer_3/output/slot/adapter/rational/numerator", "rational", [3], False),
    ("bert/encoder/layers_2_4/output/slot/adapter/rational/numerator", "rational",
     range(2, 5), True),
    ("roberta/encoder/selection/logits", "switch", [], False),
    ("bert/encoder/layer_1/attention/self/query/kernel", "frozen", [1], False),
    ("classifier/bias", "head", [], False),
])
def test_param_role_names_group_and_layers(path, group, layers, stacked):
    role = param_role(path)
    assert (role.group, role.layers, role.stacked) == (group, tuple(layers), stacked)


def test_checkpoints_hold_the_per_layer_layout_and_restore_stacked(tmp_path):
    import optax

    from aa_jax import checkpoint

    rng = np.random.default_rng(0)
    stacked = {"bert": {"encoder": {"layers_0_2": {"output": {"slot": {"adapter": {"up": {
        "kernel": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)}}}}}}},
        "classifier": {"bias": jnp.zeros(2)}}
    # Optimizer states nest parameter trees in tuples inside dicts (multi_transform).
    tx = optax.multi_transform({"a": optax.adam(1e-3), "b": optax.sgd(1e-3)},
                               jax.tree.map(lambda x: "a" if x.ndim == 3 else "b", stacked))
    opt_state = tx.init(stacked)
    mgr = checkpoint.manager(tmp_path / "checkpoints", 2)
    try:
        checkpoint.save(mgr, 1, stacked, opt_state, stacked, {"layers": []}, {"epoch": 1})
        stored = mgr.item_metadata(1)
        assert sorted(stored["params"]["bert"]["encoder"]) == ["layer_0", "layer_1", "layer_2"]
        paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(stored["opt_state"])[0]]
        assert any("layer_2" in p for p in paths) and not any("layers_" in p for p in paths)
        restored = checkpoint.restore(mgr, stacked, opt_state)
    finally:
        mgr.close()
    for got, want in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(stacked)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(opt_state)
    params, _ = checkpoint.restore_params(tmp_path / "checkpoints", stacked)
    assert jax.tree.structure(params) == jax.tree.structure(stacked)

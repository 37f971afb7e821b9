"""The Flax encoder against Hugging Face's PyTorch BertModel, and the adapter slot's identities."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from transformers import BertConfig

from aa_jax.adapters import Architecture
from aa_jax.models.bert import BertForSequenceClassification, BertModel, in_layout
from aa_jax.models.loader import with_backbone

REFERENCE = Path(__file__).parent / "reference" / "minilm_bert_reference.npz"
TOL = 1e-4


def _run(pre, inputs, architecture=None, params=None):
    model = BertModel(pre.config, architecture)
    return model.apply({"params": in_layout(params or pre.params, model)},
                       jnp.asarray(inputs["input_ids"], jnp.int32),
                       jnp.asarray(inputs["token_type_ids"], jnp.int32),
                       jnp.asarray(inputs["attention_mask"], jnp.int32))


def test_matches_committed_pytorch_reference(minilm):
    ref = np.load(REFERENCE)
    last, pooled = _run(minilm, ref)
    mask = ref["attention_mask"][..., None].astype(bool)
    # Padded positions are not defined by either model's contract; compare real tokens.
    err_last = np.max(np.abs(np.where(mask, np.asarray(last) - ref["last_hidden_state"], 0)))
    err_pooled = np.max(np.abs(np.asarray(pooled) - ref["pooler_output"]))
    assert ref["attention_mask"].min() == 0, "the reference batch must contain padding"
    assert err_last <= TOL, err_last
    assert err_pooled <= TOL, err_pooled


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_matches_live_pytorch(minilm):
    import sys

    sys.path.insert(0, str(REFERENCE.parent))
    from make_bert_reference import reference_inputs, run_torch

    inputs = reference_inputs(minilm.tokenizer)
    last_ref, pooled_ref = run_torch(minilm.path, inputs)
    last, pooled = _run(minilm, inputs)
    mask = inputs["attention_mask"][..., None].astype(bool)
    assert np.max(np.abs(np.where(mask, np.asarray(last) - last_ref, 0))) <= TOL
    assert np.max(np.abs(np.asarray(pooled) - pooled_ref)) <= TOL


def _tiny_config(layers=2):
    return BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=16)


def _tiny_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    return ids, np.zeros_like(ids), mask


def _graft(dst, src):
    """dst with every param that src also has replaced by src's value."""
    flat, other = flatten_dict(dst), flatten_dict(src)
    return unflatten_dict({k: other.get(k, v) for k, v in flat.items()})


def test_no_adapter_architecture_is_the_plain_encoder_bit_for_bit():
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    plain = BertModel(config)
    params = plain.init(jax.random.key(0), ids)["params"]
    none = BertModel(config, Architecture.none(2))
    a = plain.apply({"params": params}, ids, tt, mask)
    b = none.apply({"params": params}, ids, tt, mask)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("activation", ["relu", "rational"])
def test_adapter_with_zero_up_projection_equals_plain_layer(activation):
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    plain = BertModel(config)
    base = plain.init(jax.random.key(0), ids)["params"]
    arch = Architecture.uniform(2, activation)
    model = BertModel(config, arch)
    params = _graft(model.init(jax.random.key(1), ids)["params"], base)
    flat = flatten_dict(params)
    ups = [k for k in flat if "up" in k]
    assert ups, "the adapter should have an up-projection"
    params = unflatten_dict({k: (jnp.zeros_like(v) if "up" in k else v)
                             for k, v in flat.items()})
    a = plain.apply({"params": base}, ids, tt, mask)
    b = model.apply({"params": params}, ids, tt, mask)
    # LN(0 + h + inp) after LN(h + inp): not the same float ops, but the same function.
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_switch_at_identity_ignores_the_adapter_at_inference():
    # Identity chosen (logit_identity > logit_adapter, or a tie): the layer computes
    # LN(x + h + inp) and its adapter's weights do not matter (see test_aa_layer).
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    model = BertModel(config, Architecture.uniform(2, "rational", switch=True))
    flat = flatten_dict(model.init(jax.random.key(1), ids)["params"])
    outs = []
    for logits, scale in (([1.0, 0.0], 1.0), ([1.0, 0.0], 5.0), ([0.0, 0.0], 5.0)):
        params = {k: (jnp.broadcast_to(jnp.array(logits), v.shape) if k[-1] == "logits" else
                      v * scale if "adapter" in k else v) for k, v in flat.items()}
        outs.append(model.apply({"params": unflatten_dict(params)}, ids, tt, mask))
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_switched_adapter_training_mixes_branches_per_example():
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    model = BertModel(config, Architecture.uniform(2, "relu", switch=True), scan=True)
    variables = model.init(jax.random.key(0), ids)
    rngs = {"dropout": jax.random.key(1), "gumbel": jax.random.key(2)}
    (_, pooled), state = model.apply(variables, ids, tt, mask, deterministic=False, rngs=rngs,
                                     mutable=["intermediates"])
    # One scanned run of two layers: its switch probabilities stacked, [layers, choices].
    (probs,) = jax.tree.leaves(state["intermediates"])
    assert probs.shape == (2, 2) and np.allclose(probs, 0.5)
    again, _ = model.apply(variables, ids, tt, mask, deterministic=False, rngs=rngs,
                           mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(again[1]))


def test_classifier_head_shapes_and_adapter_drop():
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    model = BertForSequenceClassification(config, 3, Architecture.uniform(2, "relu"))
    variables = model.init(jax.random.key(0), ids)
    logits, _ = model.apply(variables, ids, tt, mask)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    # Dropping the adapters of every layer gives the plain encoder's head output.
    plain = BertForSequenceClassification(config, 3)
    plain_params = {"bert": {k: v for k, v in variables["params"]["bert"].items()},
                    "classifier": variables["params"]["classifier"]}
    dropped, _ = model.apply(variables, ids, tt, mask, adapter_drop=jnp.int32(2))
    ref, _ = plain.apply({"params": _graft(plain.init(jax.random.key(0), ids)["params"],
                                           plain_params)}, ids, tt, mask)
    # Two separately compiled programs: equal up to float32 rounding (logits ~1e-2).
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(ref), rtol=0, atol=1e-6)
    assert not np.allclose(np.asarray(dropped), np.asarray(logits))


def test_mean_pooling_head_averages_real_tokens_only():
    config = _tiny_config()
    ids, tt, mask = _tiny_inputs()
    model = BertForSequenceClassification(config, 2, pooling="mean")
    params = model.init(jax.random.key(0), ids)["params"]
    logits, _ = model.apply({"params": params}, ids, tt, mask)
    last, _ = BertModel(config).apply({"params": params["bert"]}, ids, tt, mask)
    last, m = np.asarray(last, np.float64), mask.astype(bool)
    mean = np.stack([last[i][m[i]].mean(0) for i in range(len(ids))])
    dense = params["classifier"]
    want = mean @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5)
    # Padding positions do not leak in: changing a padded token changes nothing.
    ids2 = ids.copy()
    ids2[1, 7] = (ids2[1, 7] + 1) % 50
    again, _ = model.apply({"params": params}, ids2, tt, mask)
    np.testing.assert_array_equal(np.asarray(again)[1], np.asarray(logits)[1])


def test_dropout_rate_scaling_and_passthrough():
    from aa_jax.models.bert import Dropout, dropout_keep_mask

    keep, keep_prob = dropout_keep_mask(jax.random.key(0), 0.1, (64, 12, 128, 129))
    assert keep_prob == (65536 - 6554) / 65536  # 0.1 to 16 bits
    n = keep.size
    rate = 1.0 - float(np.mean(np.asarray(keep)))
    # Binomial(n, 0.1): 5 standard deviations.
    assert abs(rate - 6554 / 65536) <= 5 * np.sqrt(0.1 * 0.9 / n)
    # The two 16-bit halves of one draw are independent: neighbours in the last axis
    # are dropped together with probability rate^2.
    both = float(np.mean(~np.asarray(keep)[..., :64] & ~np.asarray(keep)[..., 64:128]))
    assert abs(both - 0.01) <= 5 * np.sqrt(0.01 * 0.99 / (n / 2))
    x = jnp.ones((4, 8, 16))
    drop = Dropout(0.1)
    out = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    kept = np.asarray(out) != 0
    np.testing.assert_allclose(np.asarray(out)[kept], 1.0 / keep_prob, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(drop.apply({}, x, deterministic=True)), x)
    np.testing.assert_array_equal(np.asarray(Dropout(0.0).apply({}, x, deterministic=False)), x)


def test_bfloat16_backbone_stays_close_to_float32(minilm):
    """A bfloat16 backbone (8-bit mantissa, 2^-9 relative rounding per operation) keeps
    each token's direction: cosine similarity above 0.99 with float32 after 6 layers,
    while the head's logits and the switch mix stay float32."""
    ref = np.load(REFERENCE)
    ids, tt, mask = (jnp.asarray(ref[k], jnp.int32)
                     for k in ("input_ids", "token_type_ids", "attention_mask"))
    arch = Architecture.uniform(6, "rational", switch=True)
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = BertForSequenceClassification(minilm.config, 2, arch, dtype=dtype,
                                              pooling="mean")
        params = model.init(jax.random.key(0), ids)["params"]
        params = with_backbone(params, minilm.params)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
        logits, _ = model.apply({"params": params}, ids, tt, mask, deterministic=False,
                                rngs={"dropout": jax.random.key(1), "gumbel": jax.random.key(2)})
        last, _ = BertModel(minilm.config, arch, dtype=dtype).apply(
            {"params": params["bert"]}, ids, tt, mask)
        assert logits.dtype == jnp.float32 and last.dtype == dtype
        outs[dtype] = np.asarray(last, np.float64)[ref["attention_mask"].astype(bool)]
    a, b = outs[jnp.float32], outs[jnp.bfloat16]
    cosine = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.99, cosine.min()


def test_dropout_masks_do_not_depend_on_the_padded_length():
    from aa_jax.models.bert import dropout_keep_mask

    key = jax.random.key(3)
    short, _ = dropout_keep_mask(key, 0.1, (4, 16, 10), positions=(1,))
    long, _ = dropout_keep_mask(key, 0.1, (4, 24, 10), positions=(1,))
    np.testing.assert_array_equal(np.asarray(short), np.asarray(long)[:, :16])
    short, _ = dropout_keep_mask(key, 0.1, (4, 3, 16, 16), positions=(2, 3))
    long, _ = dropout_keep_mask(key, 0.1, (4, 3, 32, 32), positions=(2, 3))
    np.testing.assert_array_equal(np.asarray(short), np.asarray(long)[:, :, :16, :16])
    # Another key, or another layer's key, gives another mask.
    other, _ = dropout_keep_mask(jax.random.fold_in(key, 1), 0.1, (4, 3, 16, 16), (2, 3))
    assert not np.array_equal(np.asarray(short), np.asarray(other))


def test_from_pretrained_resolves_auto_pooling(minilm, tiny_checkpoint):
    from aa_jax.errors import UserError
    from aa_jax.models.bert import BertForSequenceClassification
    from aa_jax.models.loader import load_pretrained

    assert BertForSequenceClassification.from_pretrained(minilm, 2).pooling == "mean"
    tiny = load_pretrained(str(tiny_checkpoint))
    assert BertForSequenceClassification.from_pretrained(tiny, 2).pooling == "pooler"
    assert BertForSequenceClassification.from_pretrained(tiny, 2, pooling="max").pooling == "max"
    model = BertForSequenceClassification(tiny.config, 2, pooling="auto")
    ids = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(UserError, match=r"pooling='auto' depends on the checkpoint; build the "
                                        r"model with BertForSequenceClassification.from_pretrained"):
        model.init(jax.random.key(0), ids)

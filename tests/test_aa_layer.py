"""The adapter layer as the released code computes it: AdapterHub's seq_bn reference, and the
switched (AA) layer's training and inference formulas checked literally."""

from pathlib import Path
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax.adapters import AdapterSlot, Architecture, LayerSpec
from aa_jax.models.bert import BertModel, in_layout
from aa_jax.selection import Selection
from aa_jax.switch import ADAPTER, IDENTITY

REFERENCE = Path(__file__).parent / "reference" / "minilm_adapterhub_seq_bn_reference.npz"
TOL = 1e-4  # the encoder's own tolerance against PyTorch (test_bert), float32 over 6 layers


# -- 1. AdapterHub `adapters` (seq_bn) on the real MiniLM -------------------------------

def _with_reference_adapters(pre, ref, switch_logits=None):
    flat = {("encoder",) + k[1:] if k[0] == "encoder" else k: v
            for k, v in flatten_dict(pre.params).items()}
    for name in ref.files:
        if name.startswith("adapter/"):
            layer, proj, leaf = name.split("/")[1:]
            flat[("encoder", layer, "output", "slot", "adapter", proj, leaf)] = \
                jnp.asarray(ref[name])
    if switch_logits is not None:  # every layer's switch, in the encoder's selection
        flat[("encoder", "selection", "logits")] = jnp.tile(
            jnp.float32(switch_logits), (pre.config.num_hidden_layers, 1))
    return unflatten_dict(flat)


def _max_error_on_real_tokens(got, ref, key="last_hidden_state"):
    mask = ref["attention_mask"][..., None].astype(bool)
    return float(np.max(np.abs(np.where(mask, np.asarray(got) - ref[key], 0.0))))


def _encode(pre, architecture, params, ref):
    model = BertModel(pre.config, architecture)
    last, _ = model.apply(
        {"params": in_layout(params, model)}, *(jnp.asarray(ref[k], jnp.int32)
                              for k in ("input_ids", "token_type_ids", "attention_mask")))
    return last


@pytest.fixture(scope="module")
def ref():
    return np.load(REFERENCE)


def test_pfeiffer_encoder_matches_adapterhub(minilm, ref):
    depth = minilm.config.num_hidden_layers
    params = _with_reference_adapters(minilm, ref)
    last = _encode(minilm, Architecture.uniform(depth, "relu"), params, ref)
    assert ref["attention_mask"].min() == 0, "the reference batch must contain padding"
    # The adapters matter: without them the output is far from the reference.
    assert _max_error_on_real_tokens(ref["plain_last_hidden_state"], ref) > 100 * TOL
    assert _max_error_on_real_tokens(last, ref) <= TOL


def test_switch_only_choosing_every_adapter_matches_adapterhub_at_inference(minilm, ref):
    depth = minilm.config.num_hidden_layers
    logits = [0.0, 0.0]
    logits[ADAPTER] = 0.5  # logit_adapter > logit_identity: every layer runs its adapter
    params = _with_reference_adapters(minilm, ref, switch_logits=logits)
    last = _encode(minilm, Architecture.uniform(depth, "relu", switch=True), params, ref)
    assert _max_error_on_real_tokens(last, ref) <= TOL


# -- 2. the switched layer, literally ---------------------------------------------------

HIDDEN = 8


class _Slot(nn.Module):
    """One layer end: a LayerNorm and an adapter slot, as the shared OutputBlock wires
    them, gated by the selection as the encoder gates it."""

    spec: LayerSpec

    @nn.compact
    def __call__(self, h, inp, deterministic=True):
        arch = Architecture(layers=(self.spec,))
        gates = Selection(arch, name="selection")(h.shape[0], deterministic)
        ln = nn.LayerNorm(epsilon=1e-12, name="LayerNorm")
        slot = AdapterSlot(self.spec, arch.options, arch, SimpleNamespace(hidden_size=HIDDEN),
                           name="slot")
        return slot(h, inp, ln, None if gates is None else gates[0], None, deterministic)


def _np_layer_norm(v, scale, bias, eps=1e-12):
    v = np.asarray(v, np.float64)
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * scale + bias


def _layer(logits):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 5, HIDDEN)).astype(np.float32)
    inp = rng.normal(size=(3, 5, HIDDEN)).astype(np.float32)
    module = _Slot(LayerSpec(True, "relu", switch=True))
    params = flatten_dict(module.init(jax.random.key(0), h, inp)["params"])
    r = HIDDEN // 16 or 1
    values = {("LayerNorm", "scale"): rng.uniform(0.5, 1.5, HIDDEN),
              ("LayerNorm", "bias"): rng.normal(0, 0.1, HIDDEN),
              ("slot", "adapter", "down", "kernel"): rng.normal(0, 0.5, (HIDDEN, r)),
              ("slot", "adapter", "down", "bias"): rng.normal(0, 0.5, r),
              ("slot", "adapter", "up", "kernel"): rng.normal(0, 0.5, (r, HIDDEN)),
              ("slot", "adapter", "up", "bias"): rng.normal(0, 0.5, HIDDEN),
              ("selection", "logits"): np.asarray([logits])}
    assert set(values) == set(params)
    params = unflatten_dict({k: jnp.float32(v) for k, v in values.items()})

    def parts():
        ln = lambda v: _np_layer_norm(v, values[("LayerNorm", "scale")],  # noqa: E731
                                      values[("LayerNorm", "bias")])
        x = ln(h.astype(np.float64) + inp)
        z = np.maximum(x @ values[("slot", "adapter", "down", "kernel")]
                       + values[("slot", "adapter", "down", "bias")], 0.0)
        a = z @ values[("slot", "adapter", "up", "kernel")] + values[("slot", "adapter", "up",
                                                                          "bias")]
        return ln, x, a

    return module, params, h, inp, parts()


# float32 against float64 through two LayerNorms and a small adapter: values are O(1),
# so 1e-5 is about 100 float32 ulps, far below any formula difference (O(0.1)).
LITERAL_TOL = 1e-5


def test_soft_training_formula_for_a_fixed_gumbel_sample(monkeypatch):
    logits = np.float32([0.2, -0.3])
    module, params, h, inp, (ln, x, a) = _layer(logits)
    noise = np.float32([[0.3, -0.1], [-1.2, 0.4], [-0.2, 0.25]])  # one row per example
    monkeypatch.setattr(jax.random, "gumbel", lambda key, shape, dtype=jnp.float32:
                        jnp.asarray(noise, dtype).reshape(shape))
    out = module.apply({"params": params}, h, inp, deterministic=False,
                       rngs={"gumbel": jax.random.key(1)})
    z = (logits + noise) / 0.1
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    # The released formula: LN(h + inp + y_adapter * a + y_identity * x).
    want = ln(h + inp.astype(np.float64) + y[:, ADAPTER, None, None] * a
              + y[:, IDENTITY, None, None] * x)
    np.testing.assert_allclose(np.asarray(out), want, atol=LITERAL_TOL, rtol=0)
    # Each example mixes both branches with its own weights, and neither branch drops h.
    assert 0.01 < y[2, ADAPTER] < 0.99
    dropped_h = ln(inp.astype(np.float64) + y[:, ADAPTER, None, None] * a
                   + y[:, IDENTITY, None, None] * h)
    assert np.max(np.abs(np.asarray(out) - dropped_h)) > 0.1


@pytest.mark.parametrize("logits, branch", [([0.0, 0.5], "adapter"), ([0.5, 0.0], "identity"),
                                            ([0.25, 0.25], "identity")])
def test_inference_formula(logits, branch):
    module, params, h, inp, (ln, x, a) = _layer(np.float32(logits))
    out = module.apply({"params": params}, h, inp)
    residual = h + inp.astype(np.float64)
    # Adapter chosen: LN(a + h + inp); identity chosen (or an exact tie): LN(x + h + inp).
    want = ln(a + residual) if branch == "adapter" else ln(x + residual)
    np.testing.assert_allclose(np.asarray(out), want, atol=LITERAL_TOL, rtol=0)


def test_pfeiffer_layer_formula():
    module, params, h, inp, (ln, x, a) = _layer(np.float32([0.0, 0.0]))
    plain = _Slot(LayerSpec(True, "relu"))
    flat = {k: v for k, v in flatten_dict(params).items() if "selection" not in k}
    out = plain.apply({"params": unflatten_dict(flat)}, h, inp)
    np.testing.assert_allclose(np.asarray(out), ln(a + h + inp.astype(np.float64)),
                               atol=LITERAL_TOL, rtol=0)

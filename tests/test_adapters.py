"""Adapter sizes from configs alone, and the architecture description's round trip and checks."""

import json

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from aa_jax.adapters import Architecture, LayerSpec, adapter_weight_count
from aa_jax.errors import UserError
from aa_jax.methods import METHODS, architecture_for
from aa_jax.models.bert import BertForSequenceClassification
from aa_jax.models.loader import load_config

QQP_LAYERS = [2, 6, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23]  # the paper's transfer arch


def _adapter_shapes(config, arch):
    """Adapter weights and biases counted from the model's own param shapes (no allocation)."""
    model = BertForSequenceClassification(config, 2, arch)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    flat = flatten_dict(shapes["params"])
    adapter = {k: v for k, v in flat.items() if "adapter" in k and "rational" not in k}
    weights = sum(v.size for k, v in adapter.items() if k[-1] == "kernel")
    biases = sum(v.size for k, v in adapter.items() if k[-1] == "bias")
    return weights, biases


@pytest.mark.parametrize("name, arch, weights", [
    ("bert-base", Architecture.uniform(12, "relu"), 884_736),
    ("bert-large", Architecture.uniform(24, "relu"), 3_145_728),
    ("bert-large", Architecture.at_layers(24, QQP_LAYERS), 1_703_936),
])
def test_paper_adapter_weight_counts_from_config_alone(name, arch, weights):
    config = load_config(name)  # no download: the published configs are known
    hidden = config.hidden_size
    r = hidden // 16
    n = len(arch.adapter_layers)
    assert adapter_weight_count(hidden, arch) == (weights, n * (r + hidden))
    assert _adapter_shapes(config, arch) == (weights, n * (r + hidden))


def test_per_layer_counts_match_the_paper():
    assert adapter_weight_count(768, Architecture.uniform(1))[0] == 73_728
    assert adapter_weight_count(1024, Architecture.uniform(1))[0] == 131_072


def test_every_method_is_an_architecture_that_round_trips():
    for method in METHODS:
        arch = architecture_for(method, 6, selected_layers=[1, 4], last_n=2, top_k=2)
        again = Architecture.from_json(arch.to_json())
        assert again == arch
        assert json.loads(again.to_json()) == json.loads(arch.to_json())
    assert architecture_for("aa", 6).switched_layers == tuple(range(6))
    assert architecture_for("aa_focused", 6, selected_layers=[1, 4]).adapter_layers == (1, 4)
    assert architecture_for("last_n", 6, last_n=2, activation="relu").layers[5] == \
        LayerSpec(True, "relu", False)


@pytest.mark.parametrize("layers, message", [
    ([0, 7], "out of range"), ([1, 1], "more than once"), ([-1], "out of range"),
    (["2"], "not an integer"),
])
def test_bad_layer_lists(layers, message):
    with pytest.raises(UserError, match=message):
        Architecture.at_layers(6, layers)


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"layers": 3}', "must be a list"),
    ('{"layers": [{"adapter": "yes"}]}', "must be a bool"),
    ('{"layers": [{"adapter": true, "activation": "softplus"}]}', "Unknown adapter activation"),
    ('{"layers": [{"adapter": true}], "colour": 1}', "Unknown architecture field"),
    ('{"layers": [{"adapter": true}], "rational_version": "Z"}', "Unknown rational version"),
    ('{"layers": [{"adapter": true}], "rational_degrees": [5]}', "two integers"),
    ('{"schema": "other", "layers": []}', "Unsupported architecture schema"),
])
def test_bad_architecture_json(text, message):
    with pytest.raises(UserError, match=message):
        Architecture.from_json(text)


def test_depth_mismatch_is_one_sentence():
    with pytest.raises(UserError, match="describes 6 layers but the model has 12"):
        Architecture.none(6).check_depth(12)

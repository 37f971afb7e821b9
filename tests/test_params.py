"""Which parameters train and how: the path-rule table, clipping, the initial params, the
head a checkpoint declares, and AdapterDrop's static evaluation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax.errors import UserError
from aa_jax.methods import METHODS, architecture_for
from aa_jax.models.bert import BertForSequenceClassification, BertModel
from aa_jax.models.loader import declared_pooling, load_pretrained, minilm_path
from aa_jax.config import TrainConfig
from aa_jax.run_setup import init_params, resolve_pooling
from aa_jax.params import merge, param_groups, unstack_layers
from aa_jax.step import make_optimizer, make_predict


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_pretrained(str(tiny_checkpoint))


def _model(pre, method, pooling="pooler", num_labels=2):
    arch = architecture_for(method, pre.config.num_hidden_layers, selected_layers=[1], last_n=1,
                            top_k=1)
    return BertForSequenceClassification(pre.config, num_labels, arch, pooling=pooling)


@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_has_exactly_one_role(tiny, method):
    model = _model(tiny, method)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32)),
                            jax.random.key(0))["params"]
    groups = param_groups(shapes)
    assert set(groups) == set(flatten_dict(shapes))
    by_group = {}
    for path, group in groups.items():
        by_group.setdefault(group, set()).add("/".join(path))
    assert all(p.startswith("bert/") for p in by_group["frozen"])
    assert by_group["head"] == {"classifier/kernel", "classifier/bias"}
    assert by_group.get("switch", set()) <= {"bert/encoder/selection/logits"}
    assert all("/slot/adapter/rational/" in p for p in by_group.get("rational", ()))
    assert all("/slot/adapter/" in p and "rational" not in p
               for p in by_group.get("adapter", ()))
    has_switch = method in ("aa", "switch_only", "aa_topk")
    assert ("switch" in by_group) == has_switch


@pytest.mark.parametrize("name", ["bert/encoder/layer_0/output/slot/gate/kernel",
                                  "bert/encoder/layer_0/attention/self/query/lora_a",
                                  "head/kernel", "bert/pooler/extra"])
def test_unknown_parameter_fails_loudly(name):
    params = unflatten_dict({("classifier", "kernel"): jnp.zeros((2, 2)),
                             tuple(name.split("/")): jnp.zeros(3)})
    with pytest.raises(ValueError, match=rf"parameter {name} matches 0 rules"):
        param_groups(params)


def _adam_first_moment_norm(opt_state) -> float:
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
              if any(getattr(k, "name", None) == "mu" for k in path)]
    return float(optax.tree.norm(leaves))


@pytest.mark.parametrize("max_grad_norm, want", [(1.0, 0.1 * 1.0), (None, 0.1 * 10.0),
                                                  (0.0, 0.1 * 10.0), (4.0, 0.1 * 4.0)])
def test_global_gradient_norm_clipping(max_grad_norm, want):
    # One Adam step stores mu = (1 - b1) g = 0.1 g, so |mu| shows the gradient Adam saw.
    trainable = {"classifier": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)},
                 "bert": {"encoder": {"selection": {"logits": jnp.zeros((1, 2))},
                                      "layer_0": {"output": {"slot": {
                     "adapter": {"rational": {"numerator": jnp.zeros(6)}}}}}}}}
    grads = jax.tree.map(lambda x: jnp.ones_like(x), trainable)
    grads = jax.tree.map(lambda g: g * 10.0 / optax.tree.norm(grads), grads)  # |g| = 10
    config = TrainConfig(max_grad_norm=max_grad_norm)
    tx = make_optimizer(config, 10, trainable)
    _, state = tx.update(grads, tx.init(trainable), trainable)
    assert _adam_first_moment_norm(state) == pytest.approx(want, rel=1e-5)
    assert TrainConfig().max_grad_norm == 1.0  # the released Trainer's default


def test_init_params_keeps_the_backbone_and_builds_no_random_bert(tiny):
    model = _model(tiny, "aa")
    trainable, frozen = init_params(model, jax.random.key(0), tiny.params)
    # The frozen tree is the pretrained backbone, array for array (stacked per scanned run).
    unstacked = flatten_dict(unstack_layers(frozen))
    for path, value in flatten_dict(tiny.params).items():
        np.testing.assert_array_equal(unstacked[("bert",) + path], value)
    assert set(param_groups(trainable).values()) == {"adapter", "head", "switch", "rational"}
    # The compiled init outputs only the trainable leaves, and XLA keeps no buffer the
    # size of the word embeddings (30522 x 32 float32 = 3.9 MB) that it would need to
    # build a random BERT.
    dummy = jnp.zeros((1, 8), jnp.int32)
    names = {"/".join(k) for k in flatten_dict(trainable)}

    def init(k):
        flat = flatten_dict(model.init(k, dummy)["params"])
        return {"/".join(p): v for p, v in flat.items() if "/".join(p) in names}

    stats = jax.jit(init).lower(jax.random.key(0)).compile().memory_analysis()
    embedding_bytes = 30522 * tiny.config.hidden_size * 4
    if stats is not None:
        assert stats.temp_size_in_bytes + stats.output_size_in_bytes < embedding_bytes / 10


def test_init_params_adds_a_missing_pooler(tmp_path):
    from conftest import write_tiny_checkpoint

    with pytest.warns(UserWarning, match="no pooler"):
        pre = load_pretrained(str(write_tiny_checkpoint(tmp_path / "nopool", pooler=False)))
    trainable, frozen = init_params(_model(pre, "baseline"), jax.random.key(0), pre.params)
    assert frozen["bert"]["pooler"]["dense"]["kernel"].shape == (32, 32)
    assert "pooler" not in trainable.get("bert", {})


def test_init_params_draws_what_the_paper_v2_runs_drew(tiny):
    """The unrolled draws are pinned: these values came from init_params before it drew
    with the unrolled model in every layout (the code that trained paper_v2's CPU runs).
    The tolerance allows for the last bits of the initializer's float32 functions, which
    another CPU may vectorise differently; another draw differs in the first digit."""
    trainable = flatten_dict(init_params(_model(tiny, "aa"), jax.random.key(0),
                                         tiny.params)[0])
    pinned = {
        "bert/encoder/layer_0/output/slot/adapter/down/kernel":
            [-0.01607111282646656, 0.018204854801297188, 0.011978937312960625],
        "bert/encoder/layer_1/output/slot/adapter/up/kernel":
            [0.005817599128931761, 0.006770619191229343, -0.01698385737836361],
        "classifier/kernel": [-0.01371712051331997, -0.023231161758303642,
                              0.012275492772459984],
    }
    for name, values in pinned.items():
        got = np.asarray(trainable[tuple(name.split("/"))]).reshape(-1)[:3]
        np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=name)


def test_init_params_names_a_backbone_weight_that_does_not_fit(tiny):
    model = _model(tiny, "aa")
    flat = flatten_dict(tiny.params)
    wrong = dict(flat)
    wrong[("pooler", "dense", "kernel")] = np.zeros((32, 16), np.float32)
    with pytest.raises(ValueError, match=r"pooler/dense/kernel \(32, 16\) does not fit the "
                       r"model \(32, 32\)"):
        init_params(model, jax.random.key(0), unflatten_dict(wrong))
    extra = {**flat, ("encoder", "layer_9", "output", "dense", "kernel"):
             np.zeros((4, 4), np.float32)}
    with pytest.raises(ValueError, match=r"layer_9/output/dense/kernel \(4, 4\) does not "
                       r"fit the model \(absent\)"):
        init_params(model, jax.random.key(0), unflatten_dict(extra))


# -- the head a checkpoint declares -----------------------------------------------------

def test_minilm_declares_mean_pooling_and_auto_uses_it(minilm):
    assert declared_pooling(minilm_path()) == "mean"
    assert resolve_pooling("auto", minilm) == "mean"
    assert resolve_pooling("pooler", minilm) == "pooler"


def test_checkpoint_without_sentence_transformers_files_gets_the_paper_head(tiny):
    assert declared_pooling(tiny.path) is None
    assert resolve_pooling("auto", tiny) == "pooler"


@pytest.mark.parametrize("modes, want", [({"pooling_mode_cls_token": True}, "cls"),
                                         ({"pooling_mode_max_tokens": True}, "max"),
                                         ({"pooling_mode_mean_sqrt_len_tokens": True}, None),
                                         ({"pooling_mode_mean_tokens": True,
                                           "pooling_mode_max_tokens": True}, None)])
def test_declared_pooling_modes(tmp_path, modes, want):
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": False, **modes}))
    if want:
        assert declared_pooling(tmp_path) == want
    else:
        with pytest.raises(UserError, match="does not implement; pass --pooling"):
            declared_pooling(tmp_path)


def test_poolings_compute_what_they_say(tiny):
    ids = jnp.array([[101, 2000, 2001, 102, 0, 0], [101, 2003, 102, 2004, 2005, 102]], jnp.int32)
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
    real = np.asarray(mask, bool)[..., None]
    for pooling in ("pooler", "mean", "cls", "max"):
        model = _model(tiny, "baseline", pooling)
        trainable, frozen = init_params(model, jax.random.key(0), tiny.params)
        params = merge(trainable, frozen)
        logits, _ = model.apply({"params": params}, ids, None, mask)
        last, pooler = BertModel(tiny.config, model.architecture).apply(
            {"params": params["bert"]}, ids, None, mask)
        last = np.asarray(last, np.float64)
        pooled = {"pooler": np.asarray(pooler, np.float64),
                  "mean": (last * real).sum(1) / real.sum(1),
                  "cls": last[:, 0],
                  "max": np.where(real, last, -np.inf).max(1)}[pooling]
        head = params["classifier"]
        want = pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
        np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5, rtol=0)


# -- AdapterDrop at evaluation ----------------------------------------------------------

def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (scan, cond, pjit)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_adapterdrop_evaluation_does_not_compute_dropped_adapters(tiny):
    model = _model(tiny, "adapterdrop").clone(scan=True)
    unrolled = model.clone(scan=False)
    trainable, frozen = init_params(model, jax.random.key(0), tiny.params)
    batch = {"input_ids": jnp.ones((2, 8), jnp.int32), "token_type_ids": jnp.zeros((2, 8),
             jnp.int32), "attention_mask": jnp.ones((2, 8), jnp.int32)}
    # The scanned layers skip a dropped adapter with a cond whose dropped branch computes
    # no matmul (the adapter's two projections are only in the other branch).
    jaxpr = jax.make_jaxpr(make_predict(model, False, 1))(trainable, frozen, batch)
    conds = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "cond"]
    assert conds and all(sorted(str(b).count("dot_general") for b in e.params["branches"])
                         == [0, 2] for e in conds)
    assert not [e for e in _equations(jax.make_jaxpr(make_predict(model, False, 0))(
        trainable, frozen, batch).jaxpr) if e.primitive.name == "cond"]
    # Unrolled, a dropped adapter's flag is static: its two projections are not traced.
    per_layer = unstack_layers(trainable), unstack_layers(frozen)

    def matmuls(drop):
        jaxpr = jax.make_jaxpr(make_predict(unrolled, False, drop))(*per_layer, batch)
        return sum(e.primitive.name == "dot_general" for e in _equations(jaxpr.jaxpr))

    assert matmuls(0) - matmuls(1) == 2
    # With every adapter dropped the prediction is the adapter-free model's.
    none = BertForSequenceClassification(tiny.config, 2, architecture_for(
        "aa_focused", 2, selected_layers=[]), scan=True)
    p_none = {k: v for k, v in trainable.items() if k == "classifier"}
    got = make_predict(model, False, 2)(trainable, frozen, batch)
    want = make_predict(none, False)(p_none, frozen, batch)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

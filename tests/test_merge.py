"""``aa-jax merge``: LoRA and IA3 folded into the base weights, against transformers and
peft (reference), and end to end from a run to ``aa-jax eval``."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import cli
from aa_jax.adapters import Architecture
from aa_jax.errors import UserError
from aa_jax.export import load_adapters
from aa_jax.merging import fold, merge_adapters, save_checkpoint
from aa_jax.models.bert import BertModel, in_layout
from aa_jax.models.loader import load_pretrained
from aa_jax.params import param_groups, partition

HERE = Path(__file__).parent / "reference"
LORA = HERE / "minilm_peft_lora_reference.npz"
MERGE = HERE / "minilm_merge_reference.npz"
TOL = 1e-4  # float32 torch against XLA through six layers (as tests/test_lora.py)


def _reference_script():
    """tests/reference/make_merge_reference.py, which imports no torch at its top."""
    spec = importlib.util.spec_from_file_location("make_merge_reference",
                                                  HERE / "make_merge_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merged_lora_is_what_transformers_loads_and_peft_merges(minilm, tmp_path):
    script, ref, want = _reference_script(), np.load(LORA), np.load(MERGE)
    source = script.lora_adapter_folder(tmp_path / "adapters", ref, minilm)
    record = merge_adapters(source, tmp_path / "merged")
    out = tmp_path / "merged"
    assert record["merged"]["layers"] == list(range(6))

    # The weights peft's merge_and_unload gives, under transformers' names and layouts.
    from safetensors.numpy import load_file

    written = load_file(str(out / "model.safetensors"))
    shapes = {k: list(v.shape) for k, v in written.items()}
    assert shapes == json.loads(str(want["state_json"]))
    for name, value in written.items():
        got, expected = script.fingerprint(value), want[f"fingerprint/{name}"]
        assert np.all(np.abs(got[:2] - expected[:2]) <= 1e-6 * expected[2] + 1e-6), name
    for key in (k for k in want.files if k.startswith("block/")):
        name = key[len("block/"):]
        assert np.max(np.abs(written[name][:16, :16] - want[key])) < 1e-5, name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert not (out / "adapter_config.json").exists()  # else transformers+peft misread it

    # Loaded back by aa_jax (no adapters): transformers' output of the folder aa_jax wrote
    # (the reference step), and peft's LoRA output, within 1e-4.
    merged = load_pretrained(out)
    model = BertModel(merged.config)
    inputs = {k: want[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    last, _ = model.apply({"params": in_layout(merged.params, model)},
                          **{k: jnp.asarray(v, jnp.int32) for k, v in inputs.items()})
    real = want["attention_mask"].astype(bool)
    for other in (want["transformers_last_hidden_state"], ref["last_hidden_state"],
                  want["peft_merged_last_hidden_state"]):
        assert np.max(np.abs(np.asarray(last)[real] - other[real])) < TOL
    assert float(want["output_err"]) < TOL and float(want["weight_err"]) < 1e-5
    # The head: the merged folder's logits are the adapter folder's and transformers'.
    logits = script.logits(load_adapters(out / "aa_jax"), inputs)
    assert np.max(np.abs(logits - script.logits(load_adapters(source), inputs))) < 1e-5
    assert np.max(np.abs(logits - want["transformers_logits"])) < TOL
    assert merged.tokenizer("a test")["input_ids"] == minilm.tokenizer("a test")["input_ids"]


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_folded_backbone_computes_the_adapted_encoder(tiny_checkpoint, kind):
    pre = load_pretrained(tiny_checkpoint)
    depth = pre.config.num_hidden_layers
    arch = Architecture.uniform(depth, adapter=kind)
    # Scanned, so that the adapters come stacked (fold reads either layout).
    model = BertModel(pre.config, arch, scan=True)
    ids = jax.random.randint(jax.random.key(1), (2, 12), 0, 1000)
    params = model.init(jax.random.key(0), ids)["params"]
    groups = param_groups({"bert": params})
    params = unflatten_dict({  # the adapters away from their init
        k: v + 0.5 * jax.random.normal(jax.random.key(i), v.shape)
        if groups[("bert",) + k] == "adapter" else v
        for i, (k, v) in enumerate(flatten_dict(params).items())})
    params = unflatten_dict({**flatten_dict(params),  # the pretrained backbone
                             **flatten_dict(in_layout(pre.params, model))})
    adapted, _ = model.apply({"params": params}, ids)
    trainable, _ = partition({"bert": params})
    backbone, layers = fold(pre.params, trainable, arch, drop_first=1)
    assert layers == list(range(1, depth))
    plain = BertModel(pre.config, scan=False)
    merged, _ = plain.apply({"params": backbone}, ids)
    dropped, _ = model.apply({"params": params}, ids, adapter_drop=1)
    assert np.max(np.abs(np.asarray(merged) - np.asarray(dropped))) < 1e-5
    assert np.max(np.abs(np.asarray(adapted) - np.asarray(dropped))) > 1e-3


@pytest.mark.slow  # keeps the default run near 10 minutes; CI runs it
@pytest.mark.parametrize("name", ["tiny-mpnet", "tiny-roberta", "bert-prefixed-no-pooler"])
def test_checkpoint_keeps_each_familys_names(name, tmp_path):
    from safetensors.numpy import load_file


    if name.startswith("bert"):  # keys under "bert.", and a pooler aa_jax drew itself
        base = write_tiny_checkpoint(tmp_path / "base", prefix="bert.", pooler=False)
        with pytest.warns(UserWarning, match="no pooler"):
            pre = load_pretrained(base)
        hidden = pre.config.hidden_size
        backbone = {**pre.params, "pooler": {"dense": {
            "kernel": jnp.arange(hidden * hidden, dtype=jnp.float32).reshape(hidden, hidden),
            "bias": jnp.ones(hidden)}}}
    else:
        base = HERE / name
        pre = load_pretrained(base)
        backbone = pre.params
    out = save_checkpoint(tmp_path / "out", pre, backbone)
    names = {k.removeprefix("bert.") for k in load_file(str(base / "model.safetensors"))}
    if name.startswith("bert"):
        names |= {"pooler.dense.weight", "pooler.dense.bias"}
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == names
    again = load_pretrained(out).params
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), again,
                                     backbone))
    if name.startswith("bert"):
        assert np.array_equal(written["pooler.dense.weight"],
                              np.asarray(backbone["pooler"]["dense"]["kernel"]).T)


def test_merge_of_a_lora_run_evaluates_as_the_run(tiny_checkpoint, fake_glue, tmp_path,
                                                  capsys):
    run, export, merged = tmp_path / "run", tmp_path / "export", tmp_path / "merged"
    assert cli.main(["train", "--model", str(tiny_checkpoint), "--glue-dir", str(fake_glue),
                     "--task", "rte", "--method", "aa", "--adapter", "lora", "--lora-rank",
                     "4", "--lora-alpha", "8", "--train-size", "24", "--epochs", "2",
                     "--batch-size", "8", "--max-length", "32", "--no-progress",
                     "--switch-lr", "0.5", "--out", str(run)]) == 0
    assert cli.main(["export", str(run), "--out", str(export)]) == 0
    assert cli.main(["merge", str(export), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 0
    want = json.loads(capsys.readouterr().out)
    moved = tmp_path / "moved"
    merged.rename(moved)  # the merged folder names its checkpoint relative to itself
    assert cli.main(["eval", str(moved)]) == 0
    got = json.loads(capsys.readouterr().out)
    moved.rename(merged)
    result = json.loads((run / "result.json").read_text())
    for split in ("dev", "test"):
        assert got[split] == pytest.approx(want[split], abs=1e-6)
    assert got["test"] == pytest.approx(result["test"], abs=1e-6)

    record = json.loads((merged / "aa_jax" / "adapter_config.json").read_text())
    selected = json.loads((run / "architecture.json").read_text())["selected_layers"]
    assert record["merged"]["layers"] == sorted(selected)
    assert not any(layer["adapter"] for layer in record["architecture"]["layers"])
    # A plain Hugging Face checkpoint (no adapter_config.json, which transformers with
    # peft installed would read as a peft adapter): aa_jax loads it as a base model too.
    assert {p.name for p in merged.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "vocab.txt", "special_tokens_map.json", "aa_jax"}
    assert load_pretrained(merged).config.num_hidden_layers == 2


def test_bottleneck_adapters_are_refused_in_one_sentence(tmp_path, capsys):
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"schema": "aa_jax.adapters/v1", "architecture": Architecture.uniform(2).to_dict()}))
    assert cli.main(["merge", str(folder), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nonlinearity" in err and "seq_bn" in err
    assert not (tmp_path / "merged").exists()
    with pytest.raises(UserError, match="already exists"):
        merge_adapters(folder, tmp_path)

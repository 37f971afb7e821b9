"""Adapters folded into the base weights: a Hugging Face checkpoint that needs no aa_jax.

LoRA and IA3 are linear in the projections they change, so they fold into them (Flax
kernels are ``[in, out]``):

* ``lora`` (``x @ a @ b * alpha / rank`` added to the query and value projections):
  ``kernel + a @ b * alpha / rank``;
* ``ia3``: the key and value scales ``l`` multiply their projection's output columns and
  bias (``kernel * l``, ``bias * l``); the input scales of the two output projections
  multiply their kernel's rows (``kernel * l[:, None]``).

An exported switched run kept its adapter only in the layers its switch chose
(:mod:`aa_jax.export`), so folding the static folder covers it; layers that AdapterDrop
skipped at inference (``drop_first``) are left unfolded. Bottleneck adapters (``seq_bn``)
are refused: a nonlinearity sits between their two projections.

:func:`merge_adapters` (``aa-jax merge ADAPTERS --out DIR``) writes one folder:

* a Hugging Face checkpoint of the base model's family: ``config.json`` (the base's, with
  ``architectures`` its plain model class), ``model.safetensors`` (the folded backbone
  under the base checkpoint's own PyTorch names and layouts) and the tokenizer and
  sentence-transformers files, so ``transformers.AutoModel.from_pretrained(DIR)`` gives
  the adapted encoder;
* ``DIR/aa_jax/``: an aa_jax adapter folder with no adapters whose base model is ``DIR``:
  ``adapters.safetensors`` holds the task head and ``adapter_config.json`` the task and
  the run's record, so ``aa-jax eval DIR/aa_jax`` and ``aa-jax predict DIR/aa_jax`` work
  as on the adapter folder. aa_jax's head is not Hugging Face's ``*ForSequenceClassification``
  head for every family and pooling, so it is not put in ``model.safetensors``; and an
  ``adapter_config.json`` beside the weights would make transformers (with ``peft``
  installed) take ``DIR`` for a peft adapter. The record names ``DIR`` by its absolute
  path: after moving the folder, pass it as ``--model`` to ``aa-jax predict``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import checkpoint
from aa_jax.adapters import Architecture
from aa_jax.adapter_record import files_sha256
from aa_jax.errors import UserError, check_writable

FOLDABLE = ("lora", "ia3")
HEAD_DIR = "aa_jax"  # the merged folder's subfolder with the head and the aa_jax record
# Files of the base checkpoint copied as they are: tokenizer and sentence-transformers.
COPIED = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
          "special_tokens_map.json", "added_tokens.json", "sentencepiece.bpe.model",
          "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_MODULE_DIR = re.compile(r"^\d+_\w+$")  # sentence-transformers' module folders: 1_Pooling


def check_foldable(architecture: Architecture) -> None:
    """Refuses, in one sentence, an adapter kind that cannot be folded."""
    if architecture.adapter not in FOLDABLE:
        raise UserError(f"{architecture.adapter} adapters cannot be merged: bottleneck "
                        f"adapters have a nonlinearity between their two projections, so they "
                        f"cannot be folded into the base weights (only "
                        f"{' and '.join(FOLDABLE)} can).")


def fold(backbone: dict, trainable: dict, architecture: Architecture,
         drop_first: int = 0) -> tuple[dict, list[int]]:
    """The backbone with the adapters of ``trainable`` folded in: ``(backbone, layers)``.

    Args:
      backbone: the base params, per-layer layout, without the family prefix
        (``encoder/layer_3/attention/self/query/kernel`` <float32>[in, out]), as
        :func:`aa_jax.models.loader.load_pretrained` gives them.
      trainable: a classifier's trainable params (``<prefix>/encoder/layer_{i}/...`` and
        ``classifier/...``), either layout; only its adapter parameters are read.
      architecture: its (static) architecture, for the kind and its options.
      drop_first: layers below it ran without their adapter and are left as they are.

    Returns the new backbone (float32 numpy arrays; the sums in float64) and the sorted
    indices of the layers that were changed.
    """
    from aa_jax.layout import unstack_layers
    from aa_jax.params import param_role

    check_foldable(architecture)
    out = {k: np.asarray(v, np.float32)
           for k, v in flatten_dict(unstack_layers(backbone)).items()}
    flat = {k: np.asarray(v, np.float64)
            for k, v in flatten_dict(unstack_layers(trainable)).items()}
    scale = (architecture.options.alpha / architecture.options.rank
             if architecture.adapter == "lora" else None)
    changed: dict[tuple, np.ndarray] = {}

    def target(path: tuple) -> np.ndarray:
        """The float64 working copy of the base weight at ``path``."""
        if path not in out:
            raise UserError(f"The base model has no {'/'.join(path)} to fold an adapter "
                            f"into; merge into the base model the adapters were trained on.")
        return changed.setdefault(path, out[path].astype(np.float64))

    for path, value in flat.items():
        role = param_role(path)
        if role.group == "head":
            continue
        if role.group != "adapter":
            raise UserError(f"The adapters hold {role.group} parameters "
                            f"({'/'.join(path)}), which cannot be folded into the base "
                            f"weights; export the run again with 'aa-jax export'.")
        layer, rest = role.layers[0], path[3:]  # after <prefix>/encoder/layer_{i}/
        if layer < drop_first:
            continue
        base = ("encoder", f"layer_{layer}")
        if architecture.adapter == "lora":  # attention/self/lora/{query,value}/{a,b}
            if rest[-1] == "a":
                target(base + ("attention", "self", rest[3], "kernel"))[...] += (
                    value @ flat[path[:-1] + ("b",)] * scale)
        elif rest[:3] == ("attention", "self", "ia3"):  # key, value: output columns, bias
            for leaf in ("kernel", "bias"):
                target(base + ("attention", "self", rest[3], leaf))[...] *= value
        else:  # {attention/output,output}/ia3/input: the output projection's rows
            target(base + rest[:-2] + ("dense", "kernel"))[...] *= value[:, None]
    for path, value in changed.items():
        out[path] = value.astype(np.float32)
    layers = sorted({int(p[1].split("_")[1]) for p in changed})
    return unflatten_dict(out), layers


def state_dict(backbone: dict, pretrained) -> dict[str, np.ndarray]:
    """``backbone`` (per-layer Flax params) as a PyTorch state dict of ``pretrained``'s
    family, under the names its checkpoint uses (without the family prefix).

    Each checkpoint key is mapped to its Flax path by the family's own conversion (run on
    the keys' indices, so the inverse is exact whatever the renames); linear weights go
    back to ``[out, in]``. Converted keys the backbone lacks are copied as the base holds
    them; heads and buffers the conversion ignores are left out. A pooler the base lacks
    (aa_jax ran a random one) is written under Hugging Face's names.
    """
    from aa_jax.models.loader import load_state_dict

    family = pretrained.family
    base = load_state_dict(Path(pretrained.path))
    keys = sorted(base)
    index, _ = family.convert({k: np.float32(i) for i, k in enumerate(keys)})
    by_path = {path: keys[int(i)] for path, i in flatten_dict(index).items()}
    flat = flatten_dict(backbone)
    state = {}
    for path, key in by_path.items():
        if key.startswith(family.prefix + "."):
            key = key[len(family.prefix) + 1:]
        if path not in flat:
            state[key] = np.asarray(base[by_path[path]])
            continue
        value = np.asarray(flat[path], np.float32)
        state[key] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    for path in set(flat) - set(by_path):
        names = [p.replace("layer_", "layer.") if p.startswith("layer_") else p
                 for p in path[:-1]]
        leaf = "bias" if path[-1] == "bias" else "weight"
        value = np.asarray(flat[path], np.float32)
        state[".".join(names + [leaf])] = np.ascontiguousarray(
            value.T if path[-1] == "kernel" else value)
    return state


def _write_checkpoint(folder: Path, pretrained, backbone: dict) -> None:
    """config.json, model.safetensors and the copied files of the merged checkpoint."""
    from safetensors.numpy import save

    base = Path(pretrained.path)
    if not (base / "config.json").is_file():
        raise UserError(f"The base model {pretrained.name} has no checkpoint folder with a "
                        f"config.json to merge into; pass one with --model.")
    config = json.loads((base / "config.json").read_text())
    config["architectures"] = [type(pretrained.config).__name__.replace("Config", "Model")]
    checkpoint.write_json_atomic(folder / "config.json", config)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(save(state_dict(backbone, pretrained), metadata={"format": "pt"}))
    for name in COPIED:
        if (base / name).is_file():
            shutil.copyfile(base / name, folder / name)
    for sub in base.iterdir():
        if sub.is_dir() and not sub.is_symlink() and _MODULE_DIR.match(sub.name):
            shutil.copytree(sub, folder / sub.name, symlinks=False)


def save_checkpoint(out_dir: str | Path, pretrained, backbone: dict) -> Path:
    """Writes ``backbone`` (per-layer Flax params of ``pretrained``'s shapes) as the new
    Hugging Face checkpoint folder ``out_dir``, with ``pretrained``'s config and tokenizer
    files; returns its path."""
    out = Path(out_dir)
    checkpoint.write_folder_whole(out, lambda tmp: _write_checkpoint(tmp, pretrained, backbone),
                                  "the merged checkpoint")
    return out


def merge_adapters(adapters_or_folder, out_dir: str | Path, base_model=None) -> dict:
    """Folds an adapter folder's LoRA or IA3 into its base model and writes the merged
    folder ``out_dir`` (see the module's docstring); returns the record it writes to
    ``out_dir/aa_jax/adapter_config.json``.

    ``adapters_or_folder``: an :class:`aa_jax.export.Adapters`, or a folder or Hub repo id
    for :func:`aa_jax.export.load_adapters` (with ``base_model``, as there).
    """
    from aa_jax import __version__
    from aa_jax.export import CONFIG_FILE, SCHEMA, WEIGHTS_FILE, load_adapters
    from aa_jax.layout import unstack_layers
    from aa_jax.params import param_role

    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists; choose a new --out directory for the merge.")
    adapters = adapters_or_folder
    if isinstance(adapters, (str, os.PathLike)):
        record = checkpoint.read_json(Path(adapters) / CONFIG_FILE, "adapter config") \
            if (Path(adapters) / CONFIG_FILE).is_file() else None
        if isinstance(record, dict) and isinstance(record.get("architecture"), dict):
            check_foldable(Architecture.from_dict(record["architecture"]))  # before loading
        adapters = load_adapters(adapters, base_model=base_model)
    architecture = Architecture.from_dict(adapters.record["architecture"])
    check_foldable(architecture)
    check_writable(out.parent, "The folder of --out")
    pretrained = adapters.pretrained
    prefix = pretrained.family.prefix
    backbone, layers = fold(unstack_layers(adapters.frozen)[prefix], adapters.params,
                            architecture, adapters.drop_first)
    head = {"/".join(k): np.asarray(v) for k, v in
            flatten_dict(unstack_layers(adapters.params)).items()
            if param_role(k).group == "head"}
    source = adapters.record
    none = Architecture.none(architecture.depth, adapter=architecture.adapter,
                             options=architecture.options)
    record = {**source, "schema": SCHEMA, "aa_jax_version": __version__,
              "architecture": none.to_dict(), "drop_first": 0,
              "merged": {"adapter": architecture.adapter, "layers": layers,
                         "from": str(adapters.folder), "drop_first": adapters.drop_first,
                         "base_model": source["base_model"]}}

    def write(tmp: Path) -> None:
        from safetensors.numpy import save

        _write_checkpoint(tmp, pretrained, backbone)
        (tmp / HEAD_DIR).mkdir()
        with open(tmp / HEAD_DIR / WEIGHTS_FILE, "wb") as f:
            f.write(save(head, metadata={"format": "aa_jax"}))
        where = str(out.resolve())
        record["base_model"] = {
            # The checkpoint is this folder's parent, wherever the folder is moved.
            "name": where, "path": "..", "hub_id": None, "revision": None,
            "weights_sha256": files_sha256(sorted(tmp.glob("*.safetensors"))),
            "model_type": pretrained.config.model_type,
            "sizes": source["base_model"]["sizes"]}
        checkpoint.write_json_atomic(tmp / HEAD_DIR / CONFIG_FILE, record)

    checkpoint.write_folder_whole(out, write, "the merge")
    return record

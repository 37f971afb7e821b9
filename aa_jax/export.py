"""Learned adapters as a folder you can share: switches resolved, no training data needed.

At inference an AA model computes, in every layer, the branch its switch picks: the
adapter (``LN(a + h + inp)``) or the identity branch (``LN(x + h + inp)``). Saving fixes
those choices: selected layers keep their adapter and rational and lose the switch, the
other layers keep no adapter parameters at all and compute the identity branch. Runs
without switches are saved as they are.

:func:`save_adapters` (``aa-jax export RUN --out DIR``) writes one folder:

* ``adapters.safetensors``: the trainable parameters (adapters, rationals, LoRA, head) in
  the per-layer layout, named by their path (``bert/encoder/layer_3/adapter/down/kernel``, under the family's prefix);
* ``adapter_config.json``: everything needed to rebuild the model without the training
  data: the static architecture, pooling, dtype, max length, the task (type, label names,
  metrics), the base model (name, hub id, revision, the SHA-256 of its weights and its
  sizes), the run's config and scores, and aa_jax's version;
* ``architecture.json``: the learned architecture it came from (switched runs);
* ``README.md``: a model card with the Hub's metadata block, so that
  ``hf upload USER/NAME DIR`` (huggingface_hub's CLI) publishes the folder as it is.

:func:`load_adapters` takes such a folder or a Hub repo id and the base model, and gives
an :class:`Adapters` that :func:`aa_jax.inference.predict` and ``aa-jax eval`` use.
Folders written before this format (``export.json`` with an orbax ``params/``) are still
evaluated by :func:`load_export`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import checkpoint
from aa_jax.adapters import Architecture, LayerSpec
from aa_jax.errors import UserError, check_writable, storage_error
from aa_jax.model_card import model_card, reproduce_command
from aa_jax.models.registry import DEFAULT_MODEL_TYPE, HUB_IDS, family_of
from aa_jax.params import param_role, stack_layers_like, unstack_layers

SCHEMA = "aa_jax.adapters/v1"
EXPORT_V1 = "aa_jax.export/v1"  # the earlier format: export.json and an orbax params/
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
# The Hub ids of the presets, for the model card and for loading elsewhere.
HUB_BASE_MODELS = HUB_IDS
# The base model's sizes an adapter folder fits; another value of any is refused.
BASE_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "vocab_size")


def static_architecture(architecture: Architecture, selected: list[int]) -> Architecture:
    """``architecture`` with every switch resolved: selected layers keep their adapter
    (without switch), the other switched layers become identity branches."""
    identity = LayerSpec(identity_branch=architecture.kind.identity_branch)
    layers = []
    for i, spec in enumerate(architecture.layers):
        if not spec.switch:
            layers.append(spec)
        elif i in selected:
            layers.append(LayerSpec(True, spec.activation))
        else:
            layers.append(identity)
    return dataclasses.replace(architecture, layers=tuple(layers), selector="gumbel",
                               top_k=None)


def static_params(trainable: dict, architecture: Architecture, selected: list[int]) -> dict:
    """The trainable params a static model needs, per layer: no switch logits, and no
    adapter in the layers whose switch chose the identity."""
    dropped = {i for i, spec in enumerate(architecture.layers)
               if spec.switch and i not in selected}
    kept = {}
    for path, value in flatten_dict(unstack_layers(trainable)).items():
        role = param_role(path)
        if role.group == "switch":
            continue
        if role.group != "head" and set(role.layers) & dropped:
            continue
        kept[path] = value
    return unflatten_dict(kept)


@dataclasses.dataclass
class Adapters:
    """Learned adapters loaded into their base model, ready to predict.

    ``params`` are the trainable parameters in the model's layout and ``frozen`` the base
    model's; ``record`` is the folder's ``adapter_config.json``.
    """

    folder: Path
    record: dict
    task: Any  # aa_jax.data.Task
    model: Any  # the family's SequenceClassifier
    params: dict
    frozen: dict
    tokenizer: Any
    pretrained: Any

    @property
    def max_length(self) -> int:
        return int(self.record["max_length"])

    @property
    def drop_first(self) -> int:
        return int(self.record.get("drop_first", 0))

    @property
    def selected_layers(self) -> list[int] | None:
        return self.record.get("selected_layers")


def _task_record(task) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(task).items()}


def _task_from_record(d: dict, where: Path | str = CONFIG_FILE):
    from aa_jax.data.glue import Task

    fields = {f.name for f in dataclasses.fields(Task)}
    try:
        return Task(**{k: (tuple(v) if isinstance(v, list) else v)
                       for k, v in d.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise UserError(f"The task in {where} is not valid ({e}); export the run "
                        f"again.") from None


def _is_int(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _strings(value, allow_none: bool = False) -> bool:
    return (allow_none and value is None) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value))


def check_adapter_record(record: Any, where: Path | str) -> dict:
    """``adapter_config.json``'s fields with the types and values ``load_adapters`` uses,
    or one sentence naming the first field that is not (a folder from elsewhere may have
    been edited by hand or by someone else)."""
    from aa_jax.config import DTYPES
    from aa_jax.models.head import POOLINGS

    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise UserError(f"{where} is not an aa_jax adapter config (schema {SCHEMA!r}); write "
                        f"the folder again with 'aa-jax export'.")
    task, base = record.get("task"), record.get("base_model")
    sizes = base.get("sizes") if isinstance(base, dict) else None
    checks = {
        "method": isinstance(record.get("method"), str),
        "architecture": isinstance(record.get("architecture"), dict),
        "selected_layers": record.get("selected_layers") is None or (
            isinstance(record["selected_layers"], list)
            and all(_is_int(i) for i in record["selected_layers"])),
        "pooling": isinstance(record.get("pooling"), str) and record["pooling"] in POOLINGS[1:],
        "dtype": isinstance(record.get("dtype"), str) and record["dtype"] in DTYPES,
        "max_length": _is_int(record.get("max_length"), 1),
        "drop_first": _is_int(record.get("drop_first", 0)),
        "command": isinstance(record.get("command", ""), str),
        "config": isinstance(record.get("config", {}), dict),
        "task": isinstance(task, dict),
        "task.name": isinstance(task, dict) and isinstance(task.get("name"), str),
        "task.text_columns": isinstance(task, dict) and _strings(task.get("text_columns")),
        "task.label_names": isinstance(task, dict) and _strings(task.get("label_names"), True),
        "task.is_regression": isinstance(task, dict) and isinstance(task.get("is_regression"),
                                                                    bool),
        "base_model": isinstance(base, dict),
        "base_model.name": isinstance(base, dict) and isinstance(base.get("name"), str),
        "base_model.hub_id": isinstance(base, dict) and (
            base.get("hub_id") is None or isinstance(base.get("hub_id"), str)),
        "base_model.model_type": isinstance(base, dict) and isinstance(
            base.get("model_type", ""), str),
        "base_model.sizes": isinstance(sizes, dict) and set(sizes) == set(BASE_SIZES) and all(
            _is_int(v, 1) for v in sizes.values()),
    }
    bad = next((name for name, ok in checks.items() if not ok), None)
    if bad is not None:
        raise UserError(f"{where} has a missing or invalid {bad}; get the folder again or "
                        f"export the run again.")
    return record


def _weights_sha256(path: Path) -> str | None:
    """SHA-256 over the checkpoint's weight files (in name order), or None if it has none
    (a random backbone)."""
    files = sorted(p for pattern in ("*.safetensors", "pytorch_model.bin")
                   for p in path.glob(pattern)) if path.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def base_model_record(name: str, pretrained) -> dict:
    """Where the base model came from and what it is: its name as given, its Hub id and
    revision where known (a preset, a hub id, or a folder in the Hub's cache), the SHA-256
    of its weights, its family (``model_type``) and its sizes."""
    path = Path(pretrained.path)
    hub_id = HUB_BASE_MODELS.get(name)
    if hub_id is None and not Path(name).expanduser().exists() and name.count("/") == 1:
        hub_id = name
    revision = None
    parts = path.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        revision = parts[parts.index("snapshots") + 1]
    sizes = {k: int(getattr(pretrained.config, k)) for k in BASE_SIZES}
    return {"name": name, "hub_id": hub_id, "revision": revision,
            "weights_sha256": _weights_sha256(path),
            "model_type": pretrained.config.model_type, "sizes": sizes}


def save_adapters(out_dir: str | Path, run_dir: str | Path, pretrained=None,
                  glue_dir: str | None = None, data: list[str] | None = None
                  ) -> dict[str, Any]:
    """Writes the learned adapters of the finished run ``run_dir`` to the new folder
    ``out_dir`` (see the module's docstring); returns its ``adapter_config.json``.
    ``glue_dir`` / ``data`` point at the run's data where it moved.

    Switches are resolved: selected layers keep their adapter, the others none.
    """
    from aa_jax import __version__
    from aa_jax.run_setup import load_run
    from aa_jax.learned import read_learned

    run_dir, out = Path(run_dir), Path(out_dir)
    if not checkpoint.is_complete(run_dir):
        raise UserError(f"{run_dir} is not a finished run; train it to the end, then export.")
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists; choose a new --out directory for the export.")
    check_writable(out.parent, "The folder of --out")
    exp, params, _ = load_run(run_dir, pretrained, glue_dir, data)
    learned, selected, static = None, None, exp.architecture
    if exp.architecture.switched_layers:
        learned = read_learned(run_dir)
        selected = sorted(learned["selected_layers"])
        static = static_architecture(exp.architecture, selected)
        params = static_params(params, exp.architecture, selected)
    else:
        params = unstack_layers(params)
    result_file = run_dir / "result.json"
    result = checkpoint.read_json(result_file, "run result") if result_file.is_file() else {}
    c = exp.config
    record = {"schema": SCHEMA, "aa_jax_version": __version__, "method": c.method,
              "architecture": static.to_dict(), "selected_layers": selected,
              "pooling": exp.pooling, "dtype": c.dtype, "max_length": c.max_length,
              "drop_first": exp.drop_first, "task": _task_record(exp.task),
              "base_model": base_model_record(c.model, exp.pretrained),
              "config": c.to_dict(), "command": reproduce_command(c),
              "scores": {k: result[k] for k in ("dev", "test") if k in result},
              "source": {**(learned or {}).get("source", {}), "run": run_dir.name}}
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    tmp = None
    try:
        # A folder of this process's own beside the target (another export to the same
        # folder has its own), renamed into place whole.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, 0o777 & ~checkpoint._umask())  # mkdtemp makes it private
        _write_weights(tmp / WEIGHTS_FILE, flat)
        if learned is not None:
            checkpoint.write_json_atomic(tmp / "architecture.json", learned)
        checkpoint.write_json_atomic(tmp / CONFIG_FILE, record)
        checkpoint.write_text_atomic(tmp / "README.md", model_card(record))
        try:
            tmp.rename(out)  # the folder appears whole or not at all
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR) or \
                    out.exists() or out.is_symlink():
                raise UserError(f"{out} appeared while this export was being written "
                                f"(another export to the same folder?); it was left as it "
                                f"is: choose a new --out directory.") from None
            raise
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, UserError):
            raise
        error = storage_error(out, e)  # named after the folder, not its temporary sibling
        if error is not None:
            raise error from None
        raise
    return record


export_run = save_adapters


def _write_weights(path: Path, flat: dict[str, np.ndarray]) -> None:
    """The parameters as safetensors, written by Python (so that a full disk is an
    OSError like any other write)."""
    from safetensors.numpy import save

    with open(path, "wb") as f:
        f.write(save(flat, metadata={"format": "aa_jax"}))
        f.flush()


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an adapter folder (or an export of the earlier format)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or (path / "export.json").is_file()


def _adapter_folder(source: str | Path) -> Path:
    """A local adapter folder, or the snapshot of a Hub repo id (downloaded or cached)."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"{path} has no {CONFIG_FILE}; pass a folder written by "
                            f"'aa-jax export RUN --out DIR' (or aa_jax.save_adapters).")
        return path
    name = str(source)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"Adapter folder {path} does not exist; check the path, or give a "
                        f"Hub repo id as USER/NAME.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE,
                                                            "architecture.json", "README.md"]))
    except Exception as e:  # network, auth, missing repo: all one answer for the user
        raise UserError(f"Could not get adapters {name!r} from the Hugging Face hub "
                        f"({type(e).__name__}); download the folder and pass its path.") from None


def _check_base(record: dict, pretrained, folder: Path) -> None:
    want, c = record["base_model"], pretrained.config
    family = want.get("model_type", DEFAULT_MODEL_TYPE)
    if family != c.model_type:
        raise UserError(f"The adapters in {folder} were trained on a {family} model "
                        f"({want['name']}), not {c.model_type}; load them into that base "
                        f"model (base_model=... or --model).")
    got = {k: int(getattr(c, k)) for k in BASE_SIZES}
    if got != want["sizes"]:
        diff = ", ".join(f"{k} {want['sizes'][k]} (not {got[k]})" for k in BASE_SIZES
                         if got[k] != want["sizes"][k])
        raise UserError(f"The adapters in {folder} were trained on {want['name']} with "
                        f"{diff}; load them into that base model (base_model=... or --model).")
    sha = want.get("weights_sha256")
    if sha and _weights_sha256(Path(pretrained.path)) not in (None, sha):
        warnings.warn(f"The base model {pretrained.path} has other weights than the one the "
                      f"adapters in {folder} were trained on ({want['name']}); predictions "
                      f"will differ from the run's.", stacklevel=3)


def load_adapters(source: str | Path, base_model: str | Path | None = None,
                  pretrained=None) -> Adapters:
    """Loads an adapter folder (a local path or a Hub repo id) into its base model.

    The base model is ``pretrained`` if given, else ``base_model`` (a preset, folder or
    hub id), else the one the folder names (its name, or its hub id where the name was a
    folder that is not here). A base model of other sizes is refused.
    """
    from aa_jax.config import DTYPES
    from aa_jax.run_setup import init_params
    from aa_jax.models.loader import load_pretrained

    folder = _adapter_folder(source)
    record = check_adapter_record(
        checkpoint.read_json(folder / CONFIG_FILE, "adapter config"), folder / CONFIG_FILE)
    if pretrained is None:
        base = record["base_model"]
        name = base_model or base["name"]
        if (base_model is None and base["hub_id"] and name not in HUB_BASE_MODELS
                and not Path(name).expanduser().exists()):
            name = base["hub_id"]  # trained on a local folder that is not on this machine
        pretrained = load_pretrained(name)
    _check_base(record, pretrained, folder)
    task = _task_from_record(record["task"], folder / CONFIG_FILE)
    architecture = Architecture.from_dict(record["architecture"])
    model = family_of(pretrained.config).classifier(
        pretrained.config, task.num_labels, architecture, dtype=DTYPES[record["dtype"]],
        pooling=record["pooling"])
    template, frozen = init_params(model, jax.random.key(0), pretrained.params)
    want = {"/".join(k): v.shape for k, v in flatten_dict(unstack_layers(template)).items()}
    try:
        from safetensors.numpy import load_file

        stored = load_file(str(folder / WEIGHTS_FILE))
    except Exception as e:
        raise UserError(f"{folder / WEIGHTS_FILE} could not be read ({type(e).__name__}); "
                        f"get the folder again or export the run again.") from None
    broken = sorted(k for k, v in stored.items()
                    if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all())
    if broken:
        raise UserError(f"{folder / WEIGHTS_FILE} holds weights that are not finite numbers "
                        f"({broken[0]}); get the folder again or export the run again.")
    got = {k: tuple(v.shape) for k, v in stored.items()}
    if got != {k: tuple(v) for k, v in want.items()}:
        odd = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != tuple(want[k]))
        raise UserError(f"{folder / WEIGHTS_FILE} does not fit the architecture in "
                        f"{CONFIG_FILE} (first mismatch: {odd[0]}); export the run again.")
    params = unflatten_dict({tuple(k.split("/")): jax.numpy.asarray(v)
                             for k, v in stored.items()})
    params = stack_layers_like(params, template)
    return Adapters(folder, record, task, model, params, frozen, pretrained.tokenizer,
                    pretrained)


def load_export(export_dir: str | Path, pretrained=None):
    """(experiment, params) of a folder of the earlier export format (``export.json``
    with an orbax ``params/``); it rebuilds the run's data, so the data must be there."""
    from aa_jax.config import TrainConfig
    from aa_jax.run_setup import setup

    export_dir = Path(export_dir)
    record = checkpoint.read_json(export_dir / "export.json", "export")
    if not isinstance(record, dict) or record.get("schema") != EXPORT_V1:
        raise UserError(f"{export_dir} is not an aa_jax export (schema {EXPORT_V1!r}); make "
                        f"one with 'aa-jax export RUN_DIR --out DIR'.")
    config = TrainConfig.from_dict(record["config"])
    static = Architecture.from_dict(record["architecture"])
    exp = setup(config, pretrained, architecture=static, pooling=record.get("pooling"))
    try:
        with ocp.StandardCheckpointer() as loader:
            params = loader.restore((export_dir / "params").absolute(),
                                    unstack_layers(exp.trainable))
    except Exception as e:
        raise UserError(f"The parameters in {export_dir / 'params'} could not be restored "
                        f"({type(e).__name__}); export the run again.") from None
    return exp, stack_layers_like(params, exp.trainable)

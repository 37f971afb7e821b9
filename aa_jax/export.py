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
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import __version__, checkpoint
from aa_jax.adapters import Architecture, LayerSpec
from aa_jax.adapter_record import (BASE_SIZES, CONFIG_FILE, HUB_BASE_MODELS, SCHEMA,  # noqa: F401
                                   _weights_sha256, base_model_record, check_adapter_record,
                                   task_from_record, task_record)
from aa_jax.errors import UserError, check_writable
from aa_jax.model_card import model_card, reproduce_command
from aa_jax.models.registry import DEFAULT_MODEL_TYPE
from aa_jax.params import param_role, stack_layers_like, unstack_layers

EXPORT_V1 = "aa_jax.export/v1"  # the earlier format: export.json and an orbax params/
WEIGHTS_FILE = "adapters.safetensors"


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


def save_adapters(out_dir: str | Path, source, pretrained=None, glue_dir: str | None = None,
                  data: list[str] | None = None, *, architecture: Architecture | None = None,
                  base_model=None, task=None, labels: list[str] | None = None,
                  pooling: str = "auto", max_length: int = 128, dtype: str = "float32",
                  method: str = "custom") -> dict[str, Any]:
    """Writes learned adapters to the new folder ``out_dir`` (see the module's docstring);
    returns its ``adapter_config.json``. Switches are resolved: selected layers keep their
    adapter, the others none.

    ``source`` is a finished run's folder (``aa-jax export``; ``glue_dir`` / ``data`` point
    at its data where a run of aa_jax before 0.4 needs it, later runs record all they
    need), or a trainable parameter tree of your own loop, described by ``architecture``,
    ``base_model`` (a :func:`~aa_jax.load_pretrained` result, or a name to load), ``task``
    (a :class:`~aa_jax.data.Task`) or ``labels`` (the class names; None and no task:
    regression), ``pooling``, ``max_length``, ``dtype`` and ``method``.
    """
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists; choose a new --out directory for the export.")
    if isinstance(source, (str, os.PathLike)):
        parts = _run_parts(Path(source), pretrained, glue_dir, data)
    else:
        parts = _param_parts(source, architecture, base_model or pretrained, task, labels,
                             pooling, max_length, dtype, method)
    check_writable(out.parent, "The folder of --out")
    params, learned, arch, record = parts
    selected = None
    if arch.switched_layers:
        selected = sorted(learned["selected_layers"])
        params = static_params(params, arch, selected)
        arch = static_architecture(arch, selected)
    else:
        params = unstack_layers(params)
    record = {"schema": SCHEMA, "aa_jax_version": __version__, **record,
              "architecture": arch.to_dict(), "selected_layers": selected}
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}
    _write_folder(out, flat, record, learned if selected is not None else None)
    return record


def _run_parts(run_dir: Path, pretrained, glue_dir, data):
    """(trainable params, learned architecture, architecture, record) of a finished run,
    from its folder alone where it recorded its task (aa_jax 0.4 on), else with its data."""
    from aa_jax.config import TrainConfig
    from aa_jax.learned import read_learned
    from aa_jax.methods import get_method
    from aa_jax.models.loader import load_pretrained
    from aa_jax.run_setup import build_classifier, load_run, model_name, run_keys

    if not checkpoint.is_complete(run_dir):
        raise UserError(f"{run_dir} is not a finished run; train it to the end, then export.")
    result_file = run_dir / "result.json"
    result = checkpoint.read_json(result_file, "run result") if result_file.is_file() else {}
    learned = read_learned(run_dir) if (run_dir / "architecture.json").is_file() else None
    raw = checkpoint.read_json(run_dir / "config.json", "run config")
    if isinstance(result.get("task_record"), dict) and learned is not None:
        config = TrainConfig.from_dict(raw)
        task = task_from_record(result["task_record"], result_file)
        architecture = Architecture.from_dict(learned["architecture"])
        pretrained = pretrained or load_pretrained(model_name(config, raw.get("resolved")))
        model, trainable, _ = build_classifier(
            pretrained, architecture, task.num_labels,
            pooling=result.get("pooling") or config.pooling, dtype=config.dtype,
            key=run_keys(config.seed)[0])
        params, _ = checkpoint.restore_params(run_dir / "checkpoints", trainable)
        drop_first = get_method(config.method).adapterdrop_schedule(
            architecture.depth, config.adapterdrop_max, config.drop_first)[1]
        pooling = model.pooling
    else:  # a run of aa_jax before 0.4: its task is rebuilt from its data
        exp, params, _ = load_run(run_dir, pretrained, glue_dir, data)
        config, task, architecture = exp.config, exp.task, exp.architecture
        pretrained, drop_first, pooling = exp.pretrained, exp.drop_first, exp.pooling
    c = config
    record = {"method": c.method, "pooling": pooling, "dtype": c.dtype,
              "max_length": c.max_length, "drop_first": drop_first, "task": task_record(task),
              "base_model": base_model_record(c.model, pretrained),
              "config": c.to_dict(), "command": reproduce_command(c),
              "scores": {k: result[k] for k in ("dev", "test") if k in result},
              "source": {**(learned or {}).get("source", {}), "run": run_dir.name}}
    return params, learned, architecture, record


def _param_parts(params, architecture, base_model, task, labels, pooling, max_length, dtype,
                 method):
    """The same for a parameter tree of the caller's own loop."""
    from aa_jax.config import DTYPES
    from aa_jax.data.glue import Task
    from aa_jax.learned import learned_architecture
    from aa_jax.models.loader import load_pretrained
    from aa_jax.run_setup import resolve_pooling

    if not isinstance(params, dict) or not isinstance(architecture, Architecture):
        raise UserError("save_adapters takes a run folder, or a parameter tree with its "
                        "architecture= (an aa_jax.Architecture).")
    if base_model is None:
        raise UserError("save_adapters needs base_model= (a load_pretrained result or a "
                        "preset, folder or hub id) to save a parameter tree.")
    pretrained = load_pretrained(base_model) if isinstance(base_model, (str, os.PathLike)) \
        else base_model
    if task is None:
        regression = labels is None
        task = Task(name="custom", text_columns=("text",), label_column="label",
                    label_names=None if regression else tuple(map(str, labels)),
                    is_regression=regression,
                    metric_names=("spearman",) if regression else ("accuracy",),
                    select_metric="spearman" if regression else "accuracy")
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
    learned = learned_architecture(params, architecture, {"method": method})
    record = {"method": method, "pooling": resolve_pooling(pooling, pretrained),
              "dtype": dtype, "max_length": int(max_length), "drop_first": 0,
              "task": task_record(task),
              "base_model": base_model_record(pretrained.name, pretrained),
              "config": {}, "command": "", "scores": {}, "source": {"method": method}}
    return params, learned, architecture, record


def _write_folder(out: Path, flat: dict, record: dict, learned: dict | None) -> None:
    """The folder, written beside ``out`` and renamed into place whole."""
    def fill(tmp: Path) -> None:
        _write_weights(tmp / WEIGHTS_FILE, flat)
        if learned is not None:
            checkpoint.write_json_atomic(tmp / "architecture.json", learned)
        checkpoint.write_json_atomic(tmp / CONFIG_FILE, record)
        checkpoint.write_text_atomic(tmp / "README.md", model_card(record))

    checkpoint.write_folder_whole(out, fill, "this export")


export_run = save_adapters


def _write_weights(path: Path, flat: dict[str, np.ndarray]) -> None:
    """The parameters as safetensors, written by Python (so that a full disk is an
    OSError like any other write)."""
    from safetensors.numpy import save

    with open(path, "wb") as f:
        f.write(save(flat, metadata={"format": "aa_jax"}))
        f.flush()


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an adapter folder (or an export of the earlier format, or a
    merged checkpoint with its head in ``aa_jax/``)."""
    path = Path(path)
    return adapter_config_folder(path) is not None or (path / "export.json").is_file()


def adapter_config_folder(path: str | Path) -> Path | None:
    """The folder holding ``adapter_config.json``: ``path`` itself, or the ``aa_jax/``
    folder of a merged checkpoint (``aa-jax merge``); None where neither has one."""
    path = Path(path)
    for folder in (path, path / "aa_jax"):
        if (folder / CONFIG_FILE).is_file():
            return folder
    return None


def _adapter_folder(source: str | Path) -> Path:
    """A local adapter folder, or the snapshot of a Hub repo id (downloaded or cached)."""
    path = Path(source).expanduser()
    if path.exists():
        found = adapter_config_folder(path)
        if found is None:
            raise UserError(f"{path} has no {CONFIG_FILE}; pass a folder written by "
                            f"'aa-jax export RUN --out DIR' (or aa_jax.save_adapters).")
        return found
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
    from aa_jax.models.loader import load_pretrained
    from aa_jax.run_setup import build_classifier

    folder = _adapter_folder(source)
    record = check_adapter_record(
        checkpoint.read_json(folder / CONFIG_FILE, "adapter config"), folder / CONFIG_FILE)
    if pretrained is None:
        base = record["base_model"]
        name = base_model or base["name"]
        if base_model is None and name not in HUB_BASE_MODELS and \
                not Path(name).expanduser().exists():
            # A folder named relative to where it was exported, or not on this machine.
            recorded = Path(base["path"]) if isinstance(base.get("path"), str) else None
            if recorded is not None and not recorded.is_absolute():
                recorded = folder / recorded  # relative to the folder (a merged checkpoint)
            if recorded is not None and recorded.is_dir():
                name = str(recorded)
            elif base["hub_id"]:
                name = base["hub_id"]
        pretrained = load_pretrained(name)
    _check_base(record, pretrained, folder)
    task = task_from_record(record["task"], folder / CONFIG_FILE)
    architecture = Architecture.from_dict(record["architecture"])
    model, template, frozen = build_classifier(
        pretrained, architecture, task.num_labels, pooling=record["pooling"],
        dtype=record["dtype"])
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

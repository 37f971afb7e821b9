"""A trained AA run as a static model: its learned architecture with the switches resolved.

At inference an AA model computes, in every layer, the branch its switch picks: the
adapter (``LN(a + h + inp)``) or the identity branch (``LN(x + h + inp)``). The export
fixes those choices: selected layers keep their adapter and rational and lose the switch,
the other layers keep no adapter parameters at all and compute the identity branch. No
switch logits and no branch selection remain at run time, and only the selected layers'
adapters are stored.

An export directory holds ``export.json`` (the run's config, the static architecture and
where it came from), ``architecture.json`` (the learned architecture it was made from) and
``params/`` (an orbax checkpoint of the head and the selected adapters, per layer; the
backbone is reloaded from its own checkpoint). ``aa-jax eval EXPORT_DIR`` evaluates it, and
:func:`load_export` gives the model and parameters in Python.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import checkpoint
from aa_jax.adapters import KINDS, Architecture, LayerSpec
from aa_jax.errors import UserError, check_writable, storage_error
from aa_jax.params import param_role, stack_layers_like, unstack_layers

SCHEMA = "aa_jax.export/v1"


def static_architecture(architecture: Architecture, selected: list[int]) -> Architecture:
    """``architecture`` with every switch resolved: selected layers keep their adapter
    (without switch), the other switched layers become identity branches."""
    identity = LayerSpec(identity_branch=KINDS[architecture.adapter].identity_branch)
    layers = []
    for i, spec in enumerate(architecture.layers):
        if not spec.switch:
            layers.append(spec)
        elif i in selected:
            layers.append(LayerSpec(True, spec.activation))
        else:
            layers.append(identity)
    return dataclasses.replace(architecture, layers=tuple(layers))


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


def export_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Writes the static model of a finished AA run to ``out_dir``; returns its export.json."""
    from aa_jax.experiment import load_run
    from aa_jax.methods import read_learned

    run_dir, out = Path(run_dir), Path(out_dir)
    if not checkpoint.is_complete(run_dir):
        raise UserError(f"{run_dir} is not a finished run; train it to the end, then export.")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out directory for the export.")
    check_writable(out.parent, "The folder of --out")
    exp, params, _ = load_run(run_dir)
    if not exp.architecture.switched_layers:
        raise UserError(f"{run_dir} is a {exp.config.method} run, which has no switches; "
                        f"only runs with switches (aa, switch_only) are exported.")
    learned = read_learned(run_dir)
    selected = sorted(learned["selected_layers"])
    static = static_architecture(exp.architecture, selected)
    params = static_params(params, exp.architecture, selected)
    record = {"schema": SCHEMA, "config": exp.config.to_dict(), "pooling": exp.pooling,
              "architecture": static.to_dict(), "selected_layers": selected,
              "source": {**learned.get("source", {}), "run": run_dir.name}}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with ocp.StandardCheckpointer() as saver:
            saver.save((tmp / "params").absolute(), params)
        checkpoint.write_json_atomic(tmp / "architecture.json", learned)
        checkpoint.write_json_atomic(tmp / "export.json", record)
        tmp.rename(out)  # the export appears whole or not at all
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = storage_error(out, e)  # named after the export, not its temporary folder
        if error is not None:
            raise error from None
        raise
    return record


def is_export(path: str | Path) -> bool:
    return (Path(path) / "export.json").is_file()


def load_export(export_dir: str | Path, pretrained=None):
    """(experiment, params) of an export: the static model, its data, and its parameters."""
    from aa_jax.config import TrainConfig
    from aa_jax.experiment import setup

    export_dir = Path(export_dir)
    record = checkpoint.read_json(export_dir / "export.json", "export")
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise UserError(f"{export_dir} is not an aa_jax export (schema {SCHEMA!r}); make one "
                        f"with 'aa-jax export RUN_DIR --out DIR'.")
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

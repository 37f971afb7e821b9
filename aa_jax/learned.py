"""The learned architecture a switched run leaves, and its file (``architecture.json``).

A *learned architecture* (written to ``architecture.json`` and into the checkpoint) is the
selected layers, every switch's probabilities, every layer's rational coefficients, the
:class:`~aa_jax.adapters.Architecture` that was trained and where it came from (model, task,
train size, seed). :func:`selected_layers_from` reads the selected layers back from such a
file or from a run directory, so AA-focused can reuse them on any task, size or model of
the same depth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from aa_jax.adapters import Architecture, validate_layer_indices
from aa_jax.errors import UserError
from aa_jax.params import layer_group, layer_params
from aa_jax.selection import selected_layers, selection_logits
from aa_jax.switch import switch_probabilities

# v2: switch logits and probabilities in the released branch order (identity, adapter);
# v1 files (aa_jax 0.1, order (adapter, identity)) are read and converted.
LEARNED_SCHEMA = "aa_jax.learned_architecture/v2"
_LEARNED_SCHEMA_V1 = "aa_jax.learned_architecture/v1"


def learned_architecture(params: dict, architecture: Architecture,
                         source: dict[str, Any]) -> dict[str, Any]:
    """The learned architecture of a trained model, as a JSON-ready dict.

    Args:
      params: the model's params (``<backbone>/encoder/layer_{i}/...``); only adapter, switch
        and rational leaves are read, so trainable params alone suffice.
      architecture: the architecture that was trained.
      source: where it came from (model, task, train_size, seed, method).
    """
    per_layer = layer_params(params)
    logits = selection_logits(params)
    selected = set(selected_layers(logits, architecture)) if logits is not None else None
    layers = []
    for i, spec in enumerate(architecture.layers):
        by_group: dict[str, list] = {}
        for path, value in flatten_dict(per_layer.get(i, {})).items():
            group = layer_group(path)
            by_group.setdefault(group, []).append((path, np.asarray(value, np.float64)))

        def leaf(group, name, _found=by_group):
            return next((v for p, v in _found.get(group, []) if p[-1] == name), None)

        entry: dict[str, Any] = {"layer": i, "adapter": spec.adapter,
                                 "activation": spec.activation if spec.adapter else None}
        if spec.switch and logits is not None:
            row = np.asarray(logits[i], np.float64)
            entry["switch_logits"] = row.tolist()
            entry["switch_probs"] = np.asarray(switch_probabilities(row)).tolist()
            # The layer is selected when inference runs its adapter, as the selector
            # decides (gumbel: logits[ADAPTER] > logits[IDENTITY], an exact tie, as an
            # untrained switch has, running the identity as in the released code).
            entry["selected"] = i in selected
        else:
            entry["selected"] = spec.adapter
        num, den = leaf("rational", "numerator"), leaf("rational", "denominator")
        if num is not None:
            entry["rational"] = {"numerator": num.tolist(), "denominator": den.tolist()}
        layers.append(entry)
    return {
        "schema": LEARNED_SCHEMA,
        "selected_layers": [e["layer"] for e in layers if e["selected"]],
        "depth": architecture.depth,
        "source": dict(source),
        "architecture": architecture.to_dict(),
        "layers": layers,
    }


def read_learned(path: str | Path) -> dict[str, Any]:
    """Reads and validates a learned architecture from a file or a run directory."""
    path = Path(path)
    file = path / "architecture.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"No architecture found at {path}; pass an AA run directory or its "
                        f"architecture.json.")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{file} is not valid JSON ({getattr(e, 'msg', type(e).__name__)}); "
                        f"pass the architecture.json an AA run wrote.") from None
    except OSError as e:
        raise UserError(f"{file} could not be read ({e.strerror or e}); check its "
                        f"permissions.") from None
    if isinstance(data, dict) and data.get("schema") == _LEARNED_SCHEMA_V1:
        data = _from_v1(data)
    if not isinstance(data, dict) or data.get("schema") != LEARNED_SCHEMA:
        raise UserError(f"{file} is not an aa_jax learned architecture (schema "
                        f"{LEARNED_SCHEMA!r}); pass the architecture.json an AA run wrote.")
    _check_learned(data, file)
    return data


def _from_v1(data: dict) -> dict:
    """A v1 learned architecture in v2's branch order (its selected layers are unchanged)."""
    data = {**data, "schema": LEARNED_SCHEMA}
    arch = data.get("architecture")
    if isinstance(arch, dict) and arch.get("adapter_skip") is False:
        data["architecture"] = {k: v for k, v in arch.items() if k != "adapter_skip"}
    if isinstance(data.get("layers"), list):
        data["layers"] = [
            {**e, **{k: e[k][::-1] for k in ("switch_logits", "switch_probs")
                     if isinstance(e.get(k), list)}} if isinstance(e, dict) else e
            for e in data["layers"]]
    return data


_LEARNED_FIELDS = ("schema", "selected_layers", "depth", "source", "architecture", "layers")
_LAYER_FIELDS = ("layer", "adapter", "activation", "selected", "switch_logits",
                 "switch_probs", "rational")


def _check_learned(data: dict, file: Path) -> None:
    """Types and ranges of every field a learned architecture may have; one sentence each."""
    def need(ok: bool, problem: str):
        if not ok:
            raise UserError(f"{file} {problem}; pass the architecture.json an AA run wrote.")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def numbers(v, size=None):
        return (isinstance(v, list) and bool(v) and (size is None or len(v) == size) and
                all(isinstance(x, (int, float)) and not isinstance(x, bool) and
                    math.isfinite(x) for x in v))

    unknown = sorted(set(data) - set(_LEARNED_FIELDS))
    need(not unknown, f"has unknown field(s) {', '.join(map(repr, unknown))}")
    depth = data.get("depth")
    need(is_int(depth) and depth >= 1, "has no valid 'depth' (a positive integer)")
    need(isinstance(data.get("selected_layers"), list), "has no 'selected_layers' list")
    validate_layer_indices(data["selected_layers"], depth)
    need(isinstance(data.get("source", {}), dict), "has a 'source' that is not an object")
    if "architecture" in data:
        Architecture.from_dict(data["architecture"]).check_depth(depth)
    layers = data.get("layers", [])
    need(isinstance(layers, list), "has a 'layers' entry that is not a list")
    need(not layers or len(layers) == depth, f"has {len(layers)} 'layers' entries for a "
         f"{depth}-layer model")
    for e in layers:
        need(isinstance(e, dict) and not set(e) - set(_LAYER_FIELDS) and
             is_int(e.get("layer")) and isinstance(e.get("selected"), bool) and
             isinstance(e.get("adapter"), bool),
             f"has a 'layers' entry that is not an object with an integer 'layer' and "
             f"boolean 'adapter' and 'selected' (allowed keys: {', '.join(_LAYER_FIELDS)})")
        need(e.get("activation") is None or isinstance(e["activation"], str),
             f"has a non-text activation for layer {e['layer']}")
        for key in ("switch_logits", "switch_probs"):
            need(key not in e or numbers(e[key], 2),
                 f"has a '{key}' for layer {e['layer']} that is not two finite numbers")
        rat = e.get("rational")
        need(rat is None or (isinstance(rat, dict) and set(rat) == {"numerator", "denominator"}
                             and numbers(rat["numerator"]) and numbers(rat["denominator"])),
             f"has a 'rational' for layer {e['layer']} that is not numerator and denominator "
             f"lists of finite numbers")
    validate_layer_indices([e["layer"] for e in layers], depth)


def selected_layers_from(path: str | Path, depth: int) -> list[int]:
    """The selected layers of a learned architecture, checked against the model's depth."""
    data = read_learned(path)
    if data["depth"] != depth:
        raise UserError(f"The architecture at {path} was learned on a {data['depth']}-layer "
                        f"model but this model has {depth} layers; use an architecture "
                        f"learned on a model of the same depth.")
    return sorted(data["selected_layers"])

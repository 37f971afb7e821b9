"""The paper's methods as architectures, and the learned architecture an AA run leaves.

| method        | adapters at              | activation        | switch |
|---------------|--------------------------|-------------------|--------|
| baseline      | all layers               | ReLU              | no     |
| adapterdrop   | all layers (first n off) | ReLU              | no     |
| aa            | all layers               | rational (`one`)  | yes    |
| aa_focused    | layers an AA run selected| rational (`one`)  | no     |
| last_n        | last n layers            | rational or ReLU  | no     |
| switch_only   | all layers               | ReLU              | yes    |
| rational_only | all layers               | rational          | no     |

A *learned architecture* (written to ``architecture.json`` and into the checkpoint) is the
selected layers, every switch's probabilities, every layer's rational coefficients, the
:class:`~aa_jax.adapters.Architecture` that was trained and where it came from (model, task,
train size, seed). :func:`selected_layers_from` reads the selected layers back from such a
file or from a run directory, so AA-focused can reuse them on any task, size or model of
the same depth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from aa_jax.adapters import Architecture, validate_layer_indices
from aa_jax.errors import UserError
from aa_jax.switch import is_selected, switch_probabilities

METHODS = ("baseline", "adapterdrop", "aa", "aa_focused", "last_n", "switch_only",
           "rational_only")
LEARNED_SCHEMA = "aa_jax.learned_architecture/v1"


def architecture_for(method: str, depth: int, *, selected_layers=None, last_n: int | None = None,
                     activation: str = "rational", **options: Any) -> Architecture:
    """The :class:`Architecture` of ``method`` for a model with ``depth`` layers.

    ``options`` go to the Architecture (rational_version, hard_switch, adapter_skip, ...).
    """
    if method in ("baseline", "adapterdrop"):
        return Architecture.uniform(depth, "relu", **options)
    if method == "aa":
        return Architecture.uniform(depth, "rational", switch=True, **options)
    if method == "switch_only":
        return Architecture.uniform(depth, "relu", switch=True, **options)
    if method == "rational_only":
        return Architecture.uniform(depth, "rational", **options)
    if method == "aa_focused":
        if selected_layers is None:
            raise UserError("--method aa_focused needs --architecture pointing at an AA run "
                            "directory or an architecture.json file.")
        if not selected_layers:
            raise UserError("The given architecture selects no layer, so AA-focused would "
                            "train no adapter; use an AA run that selected at least one layer.")
        return Architecture.at_layers(depth, selected_layers, "rational", **options)
    if method == "last_n":
        if isinstance(last_n, bool) or not isinstance(last_n, int) or not 1 <= last_n <= depth:
            raise UserError(f"--method last_n needs --last-n between 1 and the model's depth "
                            f"{depth}, got {last_n!r}.")
        return Architecture.at_layers(depth, range(depth - last_n, depth), activation,
                                      **options)
    raise UserError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}.")


def learned_architecture(params: dict, architecture: Architecture,
                         source: dict[str, Any]) -> dict[str, Any]:
    """The learned architecture of a trained model, as a JSON-ready dict.

    Args:
      params: the model's params (``bert/encoder/layer_{i}/...``); only adapter, switch
        and rational leaves are read, so trainable params alone suffice.
      architecture: the architecture that was trained.
      source: where it came from (model, task, train_size, seed, method).
    """
    flat = flatten_dict(params)
    layers = []
    for i, spec in enumerate(architecture.layers):
        prefix = f"layer_{i}"

        def leaf(*names, _prefix=prefix):
            for key, value in flat.items():
                if _prefix in key and key[-len(names):] == names:
                    return np.asarray(value, dtype=np.float64)
            return None

        entry: dict[str, Any] = {"layer": i, "adapter": spec.adapter,
                                 "activation": spec.activation if spec.adapter else None}
        logits = leaf("switch", "logits") if spec.switch else None
        if logits is not None:
            entry["switch_logits"] = logits.tolist()
            entry["switch_probs"] = np.asarray(switch_probabilities(logits)).tolist()
            # The layer is selected when inference runs its adapter: argmax(logits) is the
            # adapter (logits[0] > logits[1]; an exact tie, possible only for an
            # untrained switch, resolves to the adapter as argmax does).
            entry["selected"] = bool(is_selected(logits))
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({getattr(e, 'msg', e)}); regenerate it "
                        f"with 'aa-jax architecture RUN_DIR'.") from None
    if not isinstance(data, dict) or data.get("schema") != LEARNED_SCHEMA:
        raise UserError(f"{file} is not an aa_jax learned architecture (schema "
                        f"{LEARNED_SCHEMA!r}); pass the architecture.json an AA run wrote.")
    depth = data.get("depth")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise UserError(f"{file} has no valid 'depth'; regenerate it from its run.")
    selected = data.get("selected_layers")
    if not isinstance(selected, list):
        raise UserError(f"{file} has no 'selected_layers' list; regenerate it from its run.")
    validate_layer_indices(selected, depth)
    return data


def selected_layers_from(path: str | Path, depth: int) -> list[int]:
    """The selected layers of a learned architecture, checked against the model's depth."""
    data = read_learned(path)
    if data["depth"] != depth:
        raise UserError(f"The architecture at {path} was learned on a {data['depth']}-layer "
                        f"model but this model has {depth} layers; use an architecture "
                        f"learned on a model of the same depth.")
    return sorted(data["selected_layers"])

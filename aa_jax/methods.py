"""The paper's methods, registered once, and the learned architecture an AA run leaves.

Every method is one :class:`Method` in :data:`METHODS` (where its adapters go, with which
activation, whether switched, its AdapterDrop schedule, the inputs it resolves and its
learning-rate groups). A run resolves its method once (:func:`get_method`) and the object
travels; no other module compares method names. A new method is one entry here.

| method        | adapters at              | activation        | switch |
|---------------|--------------------------|-------------------|--------|
| baseline      | all layers               | ReLU              | no     |
| adapterdrop   | all layers (first n off) | ReLU              | no     |
| aa            | all layers               | rational (`one`)  | yes    |
| aa_focused    | layers an AA run selected| rational (`one`)  | no     |
| given_layers  | the layers `--layers` names | rational        | no     |
| last_n        | last n layers            | rational or ReLU  | no     |
| switch_only   | all layers               | ReLU              | yes    |
| rational_only | all layers               | rational          | no     |

A *learned architecture* (written to ``architecture.json`` and into the checkpoint) is the
selected layers, every switch's probabilities, every layer's rational coefficients, the
:class:`~aa_jax.adapters.Architecture` that was trained and where it came from (model, task,
train size, seed). :func:`selected_layers_from` reads the selected layers back from such a
file or from a run directory, so AA-focused can reuse them on any task, size or model of
the same depth.

Method-specific training and evaluation details live on the method: AdapterDrop's
per-step draw and its evaluation drop (:meth:`Method.adapterdrop_schedule`) and what a
result should say about itself (:meth:`Method.note`); :func:`layers_run` says which
layers' adapters actually run at inference.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax.traverse_util import flatten_dict

from aa_jax.adapters import NO_ADAPTER, Architecture, LayerSpec, validate_layer_indices
from aa_jax.errors import UserError
from aa_jax.params import layer_group, layer_params
from aa_jax.switch import is_selected, switch_probabilities

# v2: switch logits and probabilities in the released branch order (identity, adapter);
# v1 files (aa_jax 0.1, order (adapter, identity)) are read and converted.
LEARNED_SCHEMA = "aa_jax.learned_architecture/v2"
_LEARNED_SCHEMA_V1 = "aa_jax.learned_architecture/v1"


# The learning rate of each trainable group, as the config field that holds it.
LEARNING_RATES = {"adapter": "learning_rate", "head": "learning_rate",
                  "switch": "switch_learning_rate", "rational": "rational_learning_rate"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the paper: everything that differs between methods.

    Attributes:
      name: what ``--method`` and the sweeps call it.
      description: one line for ``--help`` and the README.
      layers: ``(depth, selected_layers, last_n) -> layer indices`` with an adapter
        (``selected_layers`` are an AA run's, for ``reads_learned_layers``).
      activation: the adapters' nonlinearity (``None``: the config's ``activation``).
      switch: whether each adapter has a Gumbel-softmax switch.
      adapterdrop: whether each step drops the first n ~ U{0..n_max} layers' adapters.
      reads_learned_layers: whether it places adapters where an AA run selected them
        (``--architecture``).
      reads_given_layers: whether it places adapters in the layers ``--layers`` names
        (a sweep's random-layers control draws them).
      learning_rates: each trainable group's learning rate, as a config field.
    """

    name: str
    description: str
    layers: Callable[[int, Sequence[int] | None, int | None], Sequence[int]]
    activation: str | None = "relu"
    switch: bool = False
    adapterdrop: bool = False
    reads_learned_layers: bool = False
    reads_given_layers: bool = False
    learning_rates: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(LEARNING_RATES))

    def architecture(self, depth: int, *, selected_layers: Sequence[int] | None = None,
                     last_n: int | None = None, activation: str = "rational",
                     **options: Any) -> Architecture:
        """The :class:`Architecture` for a model with ``depth`` layers. ``options`` go
        to the Architecture (rational_version, hard_switch, adapter kind, ...).

        An AA-focused architecture that selects no layer is legitimate (an AA run may
        switch every adapter off): it has no adapter, and training it trains the head
        alone.
        """
        chosen = validate_layer_indices(self.layers(depth, selected_layers, last_n), depth)
        spec = LayerSpec(True, self.activation or activation, self.switch)
        return Architecture(layers=tuple(spec if i in chosen else NO_ADAPTER
                                         for i in range(depth)), **options)

    def adapterdrop_schedule(self, depth: int, adapterdrop_max: int | None,
                             drop_first: int) -> tuple[int, int]:
        """AdapterDrop's ``(n_max, k)``: each training step drops the adapters of the first
        ``n ~ U{0..n_max}`` layers, and evaluation drops the first ``k`` (their adapters
        are not computed). ``(0, 0)`` for every other method.

        ``adapterdrop_max=None`` scales the released code's 10 of 24 layers to the depth;
        the released code draws from 0..10 whatever the depth (``adapterdrop_max=10``).
        """
        if not self.adapterdrop:
            return 0, 0
        if drop_first > depth:
            raise UserError(f"--drop-first {drop_first} exceeds the model's {depth} layers; "
                            f"drop at most {depth}.")
        n_max = adapterdrop_max if adapterdrop_max is not None else (10 * depth) // 24
        return n_max, drop_first

    def note(self, architecture: Architecture) -> str | None:
        """A sentence a result should carry about how it was obtained, or None."""
        if (self.reads_learned_layers or self.reads_given_layers) and \
                not architecture.adapter_layers:
            return ("The architecture selects no layer, so no adapter was trained: this is "
                    "the frozen encoder with a trained head.")
        return None


def _all(depth, selected, last_n):
    return range(depth)


def _learned(depth, selected, last_n):
    if selected is None:
        raise UserError("--method aa_focused needs --architecture pointing at an AA run "
                        "directory or an architecture.json file.")
    return selected


def _given(depth, selected, last_n):
    if selected is None:
        raise UserError("--method given_layers needs --layers naming the layers that get an "
                        "adapter, e.g. --layers 0,3,5.")
    return selected


def _last(depth, selected, last_n):
    if isinstance(last_n, bool) or not isinstance(last_n, int) or not 1 <= last_n <= depth:
        raise UserError(f"--method last_n needs --last-n between 1 and the model's depth "
                        f"{depth}, got {last_n!r}.")
    return range(depth - last_n, depth)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", "Pfeiffer adapters with ReLU in every layer", _all),
    Method("adapterdrop", "the baseline, each step dropping the first n ~ U{0..n_max} "
           "layers' adapters", _all, adapterdrop=True),
    Method("aa", "Adaptable Adapters: rational activations and a switch in every layer",
           _all, activation="rational", switch=True),
    Method("aa_focused", "rational adapters only where an AA run selected them "
           "(--architecture)", _learned, activation="rational", reads_learned_layers=True),
    Method("given_layers", "rational adapters in the layers --layers names (no switch; "
           "e.g. a random draw of as many layers as an AA run kept)", _given,
           activation="rational", reads_given_layers=True),
    Method("last_n", "adapters in the last --last-n layers (--activation)", _last,
           activation=None),
    Method("switch_only", "ReLU adapters with a switch in every layer", _all, switch=True),
    Method("rational_only", "rational adapters in every layer, no switch", _all,
           activation="rational"),
)}


def get_method(name: str) -> Method:
    """The registered method called ``name``; an unknown name is one sentence."""
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"Unknown method {name!r}; choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


def architecture_for(method: str, depth: int, **kwargs: Any) -> Architecture:
    """``get_method(method).architecture(depth, **kwargs)``."""
    return get_method(method).architecture(depth, **kwargs)


def layers_run(learned: dict[str, Any], drop_first: int = 0) -> list[int]:
    """The layers whose adapters run at inference: the selected layers (an adapter, and a
    switch, if any, that picks it), less the first ``drop_first`` (AdapterDrop)."""
    return [i for i in learned["selected_layers"] if i >= drop_first]


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
        logits = leaf("switch", "logits") if spec.switch else None
        if logits is not None:
            entry["switch_logits"] = logits.tolist()
            entry["switch_probs"] = np.asarray(switch_probabilities(logits)).tolist()
            # The layer is selected when inference runs its adapter: logits[ADAPTER] >
            # logits[IDENTITY]; an exact tie (an untrained switch) runs the identity, as
            # in the released code.
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

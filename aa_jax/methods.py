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
| aa_topk       | all layers (k kept)      | rational (`one`)  | top-k  |

What a trained switched model chose (its *learned architecture*, ``architecture.json``)
is :mod:`aa_jax.learned`'s.

Method-specific training and evaluation details live on the method: AdapterDrop's
per-step draw and its evaluation drop (:meth:`Method.adapterdrop_schedule`) and what a
result should say about itself (:meth:`Method.note`); :func:`layers_run` says which
layers' adapters actually run at inference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from aa_jax.adapters import NO_ADAPTER, Architecture, LayerSpec, validate_layer_indices
from aa_jax.errors import UserError

# The learning rate of each trainable group, as the config field that holds it.
LEARNING_RATES = {"adapter": "learning_rate", "head": "learning_rate",
                  "switch": "switch_learning_rate", "rational": "rational_learning_rate"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the paper: everything that differs between methods.

    Attributes:
      name: what ``--method`` and the sweeps call it.
      description: one line for ``--help`` and the documentation.
      layers: ``(depth, selected_layers, last_n) -> layer indices`` with an adapter
        (``selected_layers`` are an AA run's, for ``reads_learned_layers``).
      activation: the adapters' nonlinearity (``None``: the config's ``activation``).
      switch: whether each adapter has a Gumbel-softmax switch.
      adapterdrop: whether each step drops the first n ~ U{0..n_max} layers' adapters.
      reads_learned_layers: whether it places adapters where an AA run selected them
        (``--architecture``).
      reads_given_layers: whether it places adapters in the layers ``--layers`` names
        (a sweep's random-layers control draws them).
      selector: how its switched layers are gated (:data:`aa_jax.selection.SELECTORS`).
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
    selector: str = "gumbel"
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
                                         for i in range(depth)),
                            **{"selector": self.selector, **options})

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
    Method("aa_topk", "AA whose switches keep exactly the --top-k layers with the highest "
           "logits (straight-through; k by default from the AA run --architecture names)",
           _all, activation="rational", switch=True, selector="topk"),
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

"""What an adapter kind is, and the attachment points a backbone offers it.

A kind is one module of :mod:`aa_jax.adapters` with a :class:`AdapterKind` entry in
:data:`aa_jax.adapters.registry.KINDS`. It owns its options (a frozen dataclass whose
fields are declared with :func:`aa_jax.settings.setting`, so that their flags, help and
checks are derived), its Flax modules, the attachment points it uses, its parameters'
roles and its weight count. The shared transformer layer (:mod:`aa_jax.models.layers`)
calls a kind's module at each point the kind names, under the kind's name:

==================  ====================================================  ==============
point               call                                                  module path
==================  ====================================================  ==============
``attention``       ``(x, q, k, v, gate, off) -> (q, k, v)``: the          ``attention/
                    projections of the attention input ``x``               self/<kind>``
``attention_out``   ``(s, gate, off) -> s``: the merged heads, before      ``attention/
                    the attention's output projection                      output/<kind>``
``ffn``             ``(a, gate, off) -> a``: the feed-forward block's      ``output/<kind>``
                    activations, before its output projection
``output``          ``(h, inp, layer_norm, gate, off, deterministic) ->    ``output/slot``
                    out``: the end of the layer (owns its residual and
                    LayerNorm; see :mod:`aa_jax.adapters.seq_bn`)
==================  ====================================================  ==============

Every module is a :class:`KindModule`, built as ``Module(spec, options, architecture,
config, dtype)`` (config: the backbone's sizes). ``gate`` is the layer's selection (:mod:`aa_jax.selection`): None
for an adapter that always runs, else <float32>[batch, 2], the weights of (identity,
adapter). ``off`` removes the adapter for this call (AdapterDrop): None, a Python bool
(static: not computed), or a traced <bool>[].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.errors import UserError
from aa_jax.settings import check_settings, flag_of

POINTS = ("attention", "attention_out", "ffn", "output")


@dataclasses.dataclass(frozen=True)
class AdapterKind:
    """One kind of adapter: what the ``--adapter`` flag names.

    Attributes:
      name: the flag's value, and the name of its modules.
      description: one line for ``--help``.
      options: the dataclass of its options (every field a :func:`~aa_jax.settings.setting`).
      modules: ``{attachment point: Flax module class}`` (:data:`POINTS`).
      param_rules: ``(pattern, group)`` for the parameters it adds to a layer, as a path
        below ``<family>/encoder/<layer>/`` (see :mod:`aa_jax.params`).
      weight_count: ``(hidden_size, intermediate_size, options) -> (weights, biases)`` of
        one layer's adapter, from the sizes alone.
      identity_branch: what a switch's identity choice computes once exported: the AA
        identity branch ``LN(x + h + inp)`` (True) or the plain pretrained layer (False).
    """

    name: str
    description: str
    options: type
    modules: dict[str, type]
    param_rules: tuple[tuple[str, str], ...]
    weight_count: Callable[[int, int, Any], tuple[int, int]]
    identity_branch: bool = False

    def __post_init__(self):
        unknown = set(self.modules) - set(POINTS)
        if unknown:
            raise ValueError(f"adapter kind {self.name}: unknown attachment points {unknown}; "
                             f"the backbone offers {POINTS}")

    def make_options(self, options: Any) -> Any:
        """``options`` as this kind's options dataclass: None gives the defaults, a dict
        its fields (unknown keys refused), an instance is checked."""
        if options is None:
            options = {}
        if isinstance(options, dict):
            names = [f.name for f in dataclasses.fields(self.options)]
            unknown = sorted(set(options) - set(names), key=str)
            if unknown:
                raise UserError(f"Unknown option(s) {', '.join(map(repr, unknown))} of the "
                                f"adapter kind {self.name}; allowed: "
                                f"{', '.join(names) or 'none'}.")
            options = self.options(**options)
        if not isinstance(options, self.options):
            raise UserError(f"The options of the adapter kind {self.name} must be a "
                            f"{self.options.__name__}, got {type(options).__name__}.")
        check_settings(options, f"{self.name}_")
        return options

    def flags(self) -> list[tuple[str, dataclasses.Field]]:
        """The command-line flags of its options: ``[(flag, field)]``."""
        return [(flag_of(f, f"{self.name}_"), f) for f in dataclasses.fields(self.options)]


class KindModule(nn.Module):
    """The fields every kind's module is built with: the layer's spec, the kind's options,
    the architecture, the backbone's config (its sizes) and the compute dtype."""

    spec: Any
    options: Any
    architecture: Any
    config: Any
    dtype: Any = jnp.float32


def gate_weights(gate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(identity weight, adapter weight) of a gate <float32>[batch, 2], each shaped
    [batch, 1, 1] to scale a [batch, length, features] activation."""
    from aa_jax.switch import ADAPTER, IDENTITY

    return gate[:, IDENTITY, None, None], gate[:, ADAPTER, None, None]


def scaled_by_gate(update: jax.Array, gate, off) -> jax.Array:
    """An additive update (e.g. LoRA's) as its layer's selection and AdapterDrop leave it:
    times the adapter weight of ``gate``, zero where ``off`` (traced) holds. The product
    is float32 whatever the update's dtype: the gate's weights are probabilities."""
    if gate is not None:
        _, y_adapter = gate_weights(gate)
        update = (y_adapter * update.astype(jnp.float32)).astype(update.dtype)
    if off is not None and not isinstance(off, bool):
        update = jnp.where(off, jnp.zeros_like(update), update)
    return update

"""Gumbel-softmax switch: a learnable, differentiable choice among a few branches.

Adaptable Adapters put one switch in each layer to choose between the adapter and the
identity, and keep only the layers whose switch prefers the adapter.

Convention, as in the released code: the branches are ordered (identity, adapter), so
choice ``IDENTITY = 0`` and choice ``ADAPTER = 1``. A layer is selected when its switch
picks the adapter at inference, i.e. when ``logits[ADAPTER] > logits[IDENTITY]``; an exact
tie (as at the zero init) runs the identity, because argmax returns the first maximum.
:func:`is_selected` applies exactly this rule.

Training draws per-example Gumbel noise, so each example in a batch gets its own sample
of the relaxed one-hot; inference is deterministic and needs no rng.

Observability: every call sows softmax(logits) as ``intermediates/switch_probs``; read it
with ``module.apply(variables, ..., mutable=["intermediates"])``, which returns
``(out, {"intermediates": {"switch_probs": (probs,)}})`` (one tuple entry per call).
"""

from __future__ import annotations

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.errors import UserError

# Branch order of a two-way adapter switch (the released code's order).
IDENTITY, ADAPTER = 0, 1


def switch_probabilities(logits: jax.Array) -> jax.Array:
    """softmax over the last axis: <float>[..., num_choices] -> <float32>[..., num_choices]."""
    return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def is_selected(logits: jax.Array, adapter_index: int = ADAPTER) -> jax.Array:
    """Whether the switch picks the adapter at inference.

    Args:
      logits: <float>[..., num_choices].
      adapter_index: which choice is the adapter (``ADAPTER`` = 1 by the convention).

    Returns:
      <bool>[...], True where argmax(logits) == adapter_index (ties go to the lower
      index, i.e. to the identity, exactly as the deterministic forward pass resolves
      them).
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise UserError(
            "Switch logits must have a last axis of at least 2 choices, "
            f"got shape {tuple(logits.shape)}."
        )
    num_choices = logits.shape[-1]
    if isinstance(adapter_index, bool) or not isinstance(adapter_index, numbers.Integral) or not (
        0 <= adapter_index < num_choices
    ):
        raise UserError(
            f"adapter_index must be an integer in [0, {num_choices}), got {adapter_index!r}."
        )
    return jnp.argmax(logits, axis=-1) == adapter_index


def check_temperature(value) -> None:
    """The one rule of the switches' temperature, wherever it is set (the command line,
    :class:`~aa_jax.config.TrainConfig`, :class:`~aa_jax.adapters.Architecture`,
    :class:`GumbelSwitch`): a positive finite number, not a bool."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = ok and 0 < float(value) < math.inf
    except OverflowError:
        ok = False
    if not ok:
        raise UserError(f"The switch temperature must be a positive finite number, got "
                        f"{value!r}; the paper uses 0.1.")


def relaxed_one_hot(logits: jax.Array, noise: jax.Array, temperature: float,
                    hard: bool = False) -> jax.Array:
    """The Gumbel-softmax sample of every switch: ``softmax((logits + noise) / tau)``.

    Args:
      logits: <float32>[..., num_choices]; noise: Gumbel(0, 1) noise broadcastable to it
        (one draw per example).
      hard: straight-through: the forward value is the exact one-hot of the sample's
        argmax and the gradient is that of the soft sample.

    Returns:
      <float32>[..., num_choices], each row summing to 1.
    """
    soft = jax.nn.softmax((logits + noise) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=jnp.float32)
    # soft - stop_gradient(soft) is exactly 0 in the forward pass, so the values are
    # exactly 0/1 (one_hot - stop_gradient(soft) + soft could round 1 - y + y), while
    # the gradient is that of the soft sample.
    return one_hot + (soft - jax.lax.stop_gradient(soft))


class GumbelSwitch(nn.Module):
    """Per-example relaxed one-hot over ``num_choices`` branches.

    Params: ``logits`` <float32>[num_choices], zeros at init (all choices equally likely).

    Attributes:
      num_choices: number of branches, at least 2.
      temperature: tau > 0 of the Gumbel-softmax; small tau gives near one-hot samples.
      hard: straight-through estimator: the forward value is the exact one-hot of the
        sample's argmax and the gradient is that of the soft sample.
    """

    num_choices: int = 2
    temperature: float = 0.1
    hard: bool = False

    @nn.compact
    def __call__(self, batch_size: int, deterministic: bool = True,
                 key: jax.Array | None = None) -> jax.Array:
        """Switch weights for a batch.

        Args:
          batch_size: number of examples; each gets its own noise when training.
          deterministic: True (the default) at inference: the one-hot of argmax(logits)
            for every example, no rng needed. False when training: needs ``key`` or the
            ``gumbel`` rng stream.
          key: the noise's key (the encoder passes each layer's own); default: the
            ``gumbel`` rng stream.

        Returns:
          <float32>[batch_size, num_choices], each row summing to 1.
        """
        self._check(batch_size)
        logits = self.param(
            "logits", nn.initializers.zeros_init(), (self.num_choices,), jnp.float32
        )
        self.sow("intermediates", "switch_probs", switch_probabilities(logits))

        if deterministic:
            choice = jax.nn.one_hot(jnp.argmax(logits), self.num_choices, dtype=jnp.float32)
            return jnp.broadcast_to(choice, (batch_size, self.num_choices))

        noise = jax.random.gumbel(
            self.make_rng("gumbel") if key is None else key, (batch_size, self.num_choices),
            jnp.float32)
        return relaxed_one_hot(logits, noise, self.temperature, self.hard)

    def _check(self, batch_size: int) -> None:
        if (
            isinstance(self.num_choices, bool)
            or not isinstance(self.num_choices, numbers.Integral)
            or self.num_choices < 2
        ):
            raise UserError(
                "GumbelSwitch num_choices must be an integer of at least 2, "
                f"got {self.num_choices!r}."
            )
        check_temperature(self.temperature)
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 0
        ):
            raise UserError(
                f"GumbelSwitch batch_size must be a non-negative integer, got {batch_size!r}."
            )

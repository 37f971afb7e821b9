"""``seq_bn``: the bottleneck adapter after the feed-forward block (Pfeiffer, AdapterHub's
``seq_bn``), the paper's kind, with the adaptable adapter layer's two branches.

With ``h`` the FFN output (after its dense + dropout), ``inp`` the FFN block's input and
``LN`` the layer's own pretrained output LayerNorm, ``x = LN(h + inp)`` and
``a = up(f(down(x)))``::

    no adapter      out = LN(h + inp)                                # the pretrained layer
    Pfeiffer        out = LN(a + h + inp)
    switched (AA)   training:  out = LN(h + inp + y_adapter * a + y_identity * x)
                    inference: out = LN(a + h + inp)  if the gate picks the adapter
                               out = LN(x + h + inp)  if it picks the identity

An AA model exported for inference (:mod:`aa_jax.export`) keeps the branch each switch
chose as a static layer: an adapter layer where it chose the adapter, and the *identity
branch* ``out = LN(x + h + inp)`` where it chose the identity (``identity_branch=True``).

This is what the released code computes: both branches of the switch keep the
transformer's residual ``h + inp``. The paper's "no skip connection" means that the
adapter branch has no skip of its own (it outputs ``a``, not ``a + x``); the identity
branch outputs ``x``. ``y`` are the gate's weights in the released branch order
(identity, adapter), see :mod:`aa_jax.switch` and :mod:`aa_jax.selection`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.adapters.activations import FIXED_ACTIVATIONS
from aa_jax.adapters.kind import AdapterKind, KindModule, gate_weights
from aa_jax.rational import Rational
from aa_jax.settings import POSITIVE_INT, setting


@dataclasses.dataclass(frozen=True)
class SeqBnOptions:
    """The bottleneck's size: ``hidden_size // reduction_factor`` (``--reduction-factor``)."""

    reduction_factor: int = setting(16, "seq_bn: bottleneck = hidden size // this",
                                    rule=POSITIVE_INT, flag="--reduction-factor",
                                    hint="the paper uses 16")


def bottleneck_size(hidden_size: int, reduction_factor: int) -> int:
    return max(1, hidden_size // reduction_factor)


class BottleneckAdapter(nn.Module):
    """``up(f(down(x)))``: d -> d / reduction_factor -> d.

    Weights N(0, 0.02), biases 0. The rational activation (if any) holds one set of
    coefficients shared by all units, as in the paper.
    """

    hidden_size: int
    reduction_factor: int = 16
    activation: str = "relu"
    rational_version: str = "A"
    rational_degrees: tuple[int, int] = (5, 4)
    rational_init: str = "one"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: <dtype>[batch, length, hidden] -> same shape."""
        init = nn.initializers.normal(stddev=0.02)
        r = bottleneck_size(self.hidden_size, self.reduction_factor)
        z = nn.Dense(r, kernel_init=init, dtype=self.dtype, name="down")(x)
        if self.activation == "rational":
            z = Rational(version=self.rational_version, degrees=self.rational_degrees,
                         initialization=self.rational_init, name="rational")(z)
        else:
            z = FIXED_ACTIVATIONS[self.activation](z)
        return nn.Dense(self.hidden_size, kernel_init=init, dtype=self.dtype, name="up")(z)


class AdapterSlot(KindModule):
    """The end of a transformer layer: residual + LayerNorm, with the layer's adapter.

    Call with the FFN output ``h``, the FFN block input ``inp`` and the layer's own
    LayerNorm; returns the layer output (formulas in the module docstring). ``gate`` and
    ``off`` as :mod:`aa_jax.adapters.kind` says: a static ``off=True`` skips the adapter;
    a traced one keeps the shapes and selects ``LN(h + inp)`` (AdapterDrop's per-step draw).
    """


    @nn.compact
    def __call__(self, h, inp, layer_norm, gate=None, off=None, deterministic: bool = True):
        """h, inp: <dtype>[batch, length, hidden] -> <dtype>[batch, length, hidden]."""
        arch, hidden = self.architecture, self.config.hidden_size
        residual = h + inp
        x = layer_norm(residual)
        if self.spec.identity_branch:
            return layer_norm(x + residual)
        if not self.spec.adapter or (off is True and not self.is_initializing()):
            return x
        adapter = BottleneckAdapter(
            hidden, self.options.reduction_factor, self.spec.activation,
            arch.rational_version, arch.rational_degrees, arch.rational_init,
            dtype=self.dtype, name="adapter")
        traced_off = off is not None and not isinstance(off, bool)
        if traced_off and gate is None:
            # A dropped adapter is skipped, not computed and discarded.
            if self.is_initializing():
                adapter(x)  # both cond branches must see the same (created) params
            a = nn.cond(off, lambda mdl, x_: jnp.zeros_like(x_), lambda mdl, x_: mdl(x_),
                        adapter, x)
            return jnp.where(off, x, layer_norm(a + residual))
        if gate is None:
            out = layer_norm(adapter(x) + residual)
        elif deterministic:
            # Inference: one branch for the whole batch; compute only that one.
            y_identity, y_adapter = gate_weights(gate)
            use_adapter = y_adapter[0, 0, 0] > y_identity[0, 0, 0]
            if self.is_initializing():
                adapter(x)  # both cond branches must see the same (created) params
            branch = nn.cond(use_adapter, lambda mdl, x_: mdl(x_), lambda mdl, x_: x_,
                             adapter, x)
            out = layer_norm(branch + residual)
        else:
            # The mix is at least float32 whatever the backbone's dtype: the gate's
            # weights are probabilities that bfloat16 would round to 3 digits.
            y_identity, y_adapter = gate_weights(gate)
            mix = jnp.promote_types(h.dtype, jnp.float32)
            out = layer_norm(residual.astype(mix) + y_adapter * adapter(x).astype(mix)
                             + y_identity * x.astype(mix))
        if off is None or isinstance(off, bool):
            return out
        return jnp.where(off, x, out)


def _weights(hidden_size: int, intermediate_size: int, options: SeqBnOptions):
    r = bottleneck_size(hidden_size, options.reduction_factor)
    return 2 * hidden_size * r, r + hidden_size


KIND = AdapterKind(
    "seq_bn", "bottleneck adapter after the feed-forward block (Pfeiffer; the paper's)",
    SeqBnOptions, {"output": AdapterSlot},
    ((r"output/slot/adapter/(down|up)/(kernel|bias)", "adapter"),
     (r"output/slot/adapter/rational/(numerator|denominator)", "rational")),
    _weights, identity_branch=True)

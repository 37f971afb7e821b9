"""``ia3``: learned rescaling of activations (Liu et al., 2022, "(IA)^3"), as ``peft``'s
``IA3Config`` with its default modules for BERT.

peft's defaults for BERT target ``key``, ``value`` and ``output.dense``, and match the last
by suffix, so both output projections are targeted, as feed-forward modules. In every
layer four vectors, each initialised to ones:

- ``key``, ``value`` <float32>[hidden]: the projections' outputs, bias included:
  ``k = (x W_k + b_k) * l_k`` (``attention/self/ia3/{key,value}``);
- ``input`` <float32>[hidden]: the merged heads before the attention's output projection
  (``attention/output/ia3/input``);
- ``input`` <float32>[intermediate]: the feed-forward activations before its output
  projection (``output/ia3/input``).

A switched layer scales by ``y_identity + y_adapter * l`` (its gate's weights), so its
identity choice is the plain pretrained layer; AdapterDrop's ``off`` scales by one.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from aa_jax.adapters.kind import AdapterKind, KindModule, gate_weights


@dataclasses.dataclass(frozen=True)
class IA3Options:
    """IA3 has no size to choose."""


def _rescale(module: nn.Module, name: str, x, gate, off):
    """``x * l`` with ``l`` the module's vector ``name`` <float32>[features], as the gate
    and ``off`` leave it (see the module docstring); float32 where the gate mixes."""
    scale = module.param(name, nn.initializers.ones_init(), (x.shape[-1],), jnp.float32)
    if gate is not None:
        y_identity, y_adapter = gate_weights(gate)
        scale = y_identity + y_adapter * scale  # [batch, 1, features]
    if off is not None and not isinstance(off, bool):
        scale = jnp.where(off, jnp.ones_like(scale), scale)
    if gate is None:
        return x * scale.astype(x.dtype)
    return (x.astype(jnp.float32) * scale).astype(x.dtype)


class IA3Attention(KindModule):

    @nn.compact
    def __call__(self, x, q, k, v, gate=None, off=None):
        return q, _rescale(self, "key", k, gate, off), _rescale(self, "value", v, gate, off)


class IA3Input(KindModule):
    """The rescaled input of an output projection (the attention's, or the FFN's)."""


    @nn.compact
    def __call__(self, a, gate=None, off=None):
        return _rescale(self, "input", a, gate, off)


KIND = AdapterKind(
    "ia3", "IA3: learned scaling of keys, values and both output projections' inputs "
    "(peft's IA3Config for BERT)",
    IA3Options, {"attention": IA3Attention, "attention_out": IA3Input, "ffn": IA3Input},
    ((r"attention/self/ia3/(key|value)", "adapter"),
     (r"attention/output/ia3/input", "adapter"),
     (r"output/ia3/input", "adapter")),
    lambda hidden, intermediate, o: (3 * hidden + intermediate, 0))

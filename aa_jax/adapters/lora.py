"""``lora``: low-rank updates of the attention's query and value projections (Hu et al.,
2022; as ``peft``'s ``LoraConfig(target_modules=["query", "value"])``).

``q = x W_q + b_q + (x a_q) b_q' * alpha / rank`` and likewise for ``v``. A switched
layer scales both updates by its gate's adapter weight, so its identity choice is the
plain pretrained layer (nothing to keep once exported). LoRA folds into the projections'
weights; see :mod:`aa_jax.merging` (``aa-jax merge``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.adapters.kind import AdapterKind, KindModule, scaled_by_gate
from aa_jax.settings import POSITIVE_INT, POSITIVE_NUMBER, setting


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    """LoRA's rank ``r`` (``--lora-rank``) and scale ``alpha`` (``--lora-alpha``): the
    update is ``x a b * alpha / r``."""

    rank: int = setting(8, "lora: the rank r of each update", rule=POSITIVE_INT)
    alpha: float = setting(16.0, "lora: the update is scaled by alpha / r",
                           rule=POSITIVE_NUMBER)


class LoRA(nn.Module):
    """A low-rank update of a projection: ``x @ a @ b * alpha / rank``.

    ``a`` <float32>[in, rank] starts as Kaiming-uniform (bound 1/sqrt(in)) and ``b``
    <float32>[rank, features] at zero, as in ``peft``, so training starts from the
    pretrained projection.
    """

    features: int
    rank: int = 8
    alpha: float = 16.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: <dtype>[..., in] -> <dtype>[..., features]."""
        a = self.param("a", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                       (x.shape[-1], self.rank), jnp.float32)
        b = self.param("b", nn.initializers.zeros_init(), (self.rank, self.features),
                       jnp.float32)
        scale = jnp.asarray(self.alpha / self.rank, self.dtype)
        return (x @ a.astype(self.dtype)) @ b.astype(self.dtype) * scale


class LoraAttention(KindModule):
    """The LoRA updates of a layer's query and value projections (``attention/self/lora/
    {query,value}``), gated by the layer's selection."""


    @nn.compact
    def __call__(self, x, q, k, v, gate=None, off=None):
        o, hidden = self.options, self.config.hidden_size
        dq, dv = (scaled_by_gate(LoRA(hidden, o.rank, o.alpha, self.dtype, name=which)(x),
                                 gate, off) for which in ("query", "value"))
        return q + dq, k, v + dv


KIND = AdapterKind(
    "lora", "LoRA on the attention's query and value projections (--lora-rank, "
    "--lora-alpha)",
    LoraOptions, {"attention": LoraAttention},
    ((r"attention/self/lora/(query|value)/(a|b)", "adapter"),),
    lambda hidden, intermediate, o: (4 * hidden * o.rank, 0))

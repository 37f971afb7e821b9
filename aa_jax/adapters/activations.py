"""The nonlinearities an adapter may use: the learnable rational or a fixed function."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

FIXED_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "swish": jax.nn.swish,
    "identity": lambda x: x,
}
ACTIVATIONS = ("rational", *FIXED_ACTIVATIONS)

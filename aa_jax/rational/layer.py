"""The Flax module: a rational activation whose coefficients train with the adapter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.rational.fit import check_init, init_coefficients
from aa_jax.rational.function import DEFAULT_DEGREES, check_degrees, check_version, rational


class Rational(nn.Module):
    """A rational activation with one set of coefficients shared by all units.

    Params: ``numerator`` <float32>[m + 1] and ``denominator`` <float32>[n] ([n + 1] for
    version C), initialised by :func:`init_coefficients`. Sharing the coefficients keeps
    the activation a handful of parameters per adapter, as in Adaptable Adapters.

    ``initialization`` names the starting function (one of INITS); it is not called
    ``init`` so that ``Module.init`` keeps working on a standalone instance.
    """

    version: str = "A"
    degrees: tuple[int, int] = DEFAULT_DEGREES
    initialization: str = "one"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: any shape -> R(x), same shape and dtype (see :func:`rational`)."""
        check_version(self.version)
        check_init(self.initialization)
        degrees = check_degrees(self.degrees)

        def coefficient(index):
            def initializer(_rng):
                return jnp.asarray(init_coefficients(self.initialization, self.version, degrees)[index])

            return initializer

        numerator = self.param("numerator", coefficient(0))
        denominator = self.param("denominator", coefficient(1))
        return rational(x, numerator, denominator, self.version)

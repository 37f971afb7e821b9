"""The Flax module: a rational activation whose coefficients train with the adapter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.rational.fit import check_init, init_coefficients
from aa_jax.rational.function import DEFAULT_DEGREES, check_degrees, check_version, rational


# The name a Rational sows the range of its input under (see Rational).
INPUT_RANGE = "input_range"


class Rational(nn.Module):
    """A rational activation with one set of coefficients shared by all units.

    Params: ``numerator`` <float32>[m + 1] and ``denominator`` <float32>[n] ([n + 1] for
    version C), initialised by :func:`init_coefficients`. Sharing the coefficients keeps
    the activation a handful of parameters per adapter, as in Adaptable Adapters.

    ``initialization`` names the starting function (one of INITS); it is not called
    ``init`` so that ``Module.init`` keeps working on a standalone instance.

    Observability: where the ``intermediates`` collection is mutable, every call sows the
    (min, max) of its input over all elements, <float32>[2], as
    ``intermediates/input_range`` (one tuple entry per call; stacked over the layers of a
    scanned run); it reads the input and changes nothing that is computed from it.
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
        if self.is_mutable_collection("intermediates"):
            # Behind a barrier, XLA cannot fuse the min and max with the reductions over
            # x that the gradients take (which could change how those sum).
            seen = jax.lax.optimization_barrier(jax.lax.stop_gradient(x))
            self.sow("intermediates", INPUT_RANGE,
                     jnp.stack([jnp.min(seen), jnp.max(seen)]).astype(jnp.float32))
        return rational(x, numerator, denominator, self.version)

"""Learnable rational activation R(x) = P(x) / Q(x).

Adaptable Adapters replace the fixed nonlinearity of each adapter with a rational function
whose coefficients are trained with the rest of the adapter, so every layer can learn the
activation it needs. The numerator is always

    P(x) = a_0 + a_1 x + ... + a_m x^m                          (m + 1 coefficients)

and the denominator comes in four versions (b are the denominator coefficients):

    A: Q(x) = 1 + sum_{k=1..n} |b_k x^k|        (n coefficients; the official AA default)
    B: Q(x) = 1 + |sum_{k=1..n} b_k x^k|        (n coefficients)
    C: Q(x) = 0.1 + |b_0 + sum_{k=1..n} b_k x^k|  (n + 1 coefficients)
    N: Q(x) = 1 + sum_{k=1..n} b_k x^k          (n coefficients; may have poles, for comparison)

A, B and C keep Q >= 1 (or >= 0.1), so R has no poles for any coefficients; N does not.
The default degrees are (m, n) = (5, 4).

The package is split by job:

* :mod:`aa_jax.rational.function` -- :func:`rational` (and its denominator,
  :func:`rational_denominator`), its gradients (those of the PAU kernels) and the checks
  of versions and degrees;
* :mod:`aa_jax.rational.fit` -- :func:`fit_rational`, the named initialisations
  (:func:`init_coefficients`) and their recorded errors;
* :mod:`aa_jax.rational.layer` -- the Flax module :class:`Rational`.
"""

from aa_jax.rational.fit import (
    FIT_MAX_ERROR,
    FIT_MEASURED_ERROR,
    INITS,
    check_init,
    fit_rational,
    init_coefficients,
    measure_fit_error,
)
from aa_jax.rational.function import (
    DEFAULT_DEGREES,
    VERSIONS,
    check_degrees,
    check_version,
    rational,
    rational_denominator,
)
from aa_jax.rational.layer import Rational

__all__ = [
    "DEFAULT_DEGREES",
    "FIT_MAX_ERROR",
    "FIT_MEASURED_ERROR",
    "INITS",
    "VERSIONS",
    "Rational",
    "check_degrees",
    "check_init",
    "check_version",
    "fit_rational",
    "init_coefficients",
    "measure_fit_error",
    "rational",
    "rational_denominator",
]

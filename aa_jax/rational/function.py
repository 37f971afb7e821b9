"""R(x) = P(x) / Q(x) in JAX: the argument checks, the evaluation and its gradients.

The versions A, B, C and N are defined in :mod:`aa_jax.rational`.

Gradients follow the PAU CUDA kernels that the released Adaptable Adapters code trains
with: every ``|t|`` in Q has the derivative ``copysign(1, t)``, which is +1 at t = +0
(JAX's own ``abs`` rule gives +1 at both zeros, PyTorch's CPU ``abs`` gives 0). So:

    A: dR/db_k = -P/Q^2 * copysign(1, b_k) * |x|^k       (= -P/Q^2 |x|^k at b_k = +0)
       dR/dx   = P'/Q - P/Q^2 * copysign(1, x) * sum_k k |b_k| |x|^(k-1)
    B: dR/db_k = -P/Q^2 * copysign(1, s) * x^k,   s = b_1 x + b_2 x^2 + ... (summed in
       that order, as the kernel does, so that s = +0 at b = 0 for n >= 2)

Version A is evaluated as the kernel writes it, Q = 1 + sum |b_k| |x|^k (the same
function as sum |b_k x^k|). Versions C and N have no kernel in the released code; C uses
the same copysign rule.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from aa_jax.errors import UserError

VERSIONS = ("A", "B", "C", "N")
DEFAULT_DEGREES = (5, 4)

# The lower bound of Q in version C.
_C_FLOOR = 0.1


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def check_version(version: str) -> str:
    if not isinstance(version, str) or version not in VERSIONS:
        raise UserError(
            f"Unknown rational version {version!r}; choose one of: {', '.join(VERSIONS)}."
        )
    return version


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_degrees(degrees: tuple[int, int]) -> tuple[int, int]:
    """Return ``degrees`` as a hashable ``(m, n)`` pair of plain non-negative ints."""
    ok = (
        isinstance(degrees, (tuple, list))
        and len(degrees) == 2
        and all(_is_int(d) and d >= 0 for d in degrees)
    )
    if not ok:
        raise UserError(
            "Rational degrees must be a pair of non-negative integers (numerator degree, "
            f"denominator degree) such as (5, 4), got {degrees!r}."
        )
    return int(degrees[0]), int(degrees[1])


def _denominator_size(version: str, n: int) -> int:
    """Number of denominator coefficients for denominator degree ``n``: C also has b_0."""
    return n + 1 if check_version(version) == "C" else n


def _check_coefficient_shapes(numerator: jax.Array, denominator: jax.Array, version: str):
    if numerator.ndim != 1 or numerator.shape[0] < 1:
        raise UserError(
            "Rational numerator must be a 1-D array of m + 1 coefficients a_0..a_m, "
            f"got shape {tuple(numerator.shape)}."
        )
    if version == "C":
        if denominator.ndim != 1 or denominator.shape[0] < 1:
            raise UserError(
                "Rational denominator for version C must be a 1-D array of n + 1 "
                f"coefficients b_0..b_n, got shape {tuple(denominator.shape)}."
            )
    elif denominator.ndim != 1:
        raise UserError(
            f"Rational denominator for version {version} must be a 1-D array of n "
            f"coefficients b_1..b_n, got shape {tuple(denominator.shape)}."
        )


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


@jax.custom_jvp
def _abs(t: jax.Array) -> jax.Array:
    """|t| whose derivative is copysign(1, t), as in the PAU kernels (+1 at +0, -1 at -0)."""
    return jnp.abs(t)


@_abs.defjvp
def _abs_jvp(primals, tangents):
    (t,), (dt,) = primals, tangents
    return jnp.abs(t), jnp.copysign(jnp.ones_like(t), t) * dt


def _horner(coefficients: jax.Array, x: jax.Array) -> jax.Array:
    """sum_j c_j x^j for coefficients c_0..c_d; one multiply-add per degree."""
    acc = jnp.broadcast_to(coefficients[-1], x.shape)
    for j in range(coefficients.shape[0] - 2, -1, -1):
        acc = acc * x + coefficients[j]
    return acc


def _denominator(x: jax.Array, b: jax.Array, version: str) -> jax.Array:
    n = b.shape[0]
    if version == "A":
        # Q = 1 + |x| (|b_1| + |x| (|b_2| + ...)): the kernel's 1 + sum |b_k| |x|^k by
        # Horner's rule, with the kernel's derivatives through _abs (module docstring).
        if not n:
            return jnp.ones_like(x)
        return 1.0 + _abs(x) * _horner(_abs(b), _abs(x))
    if version == "C":
        return _C_FLOOR + _abs(_horner(b, x))
    if version == "B":
        # s = b_1 x + b_2 x^2 + ... term by term, in the kernel's order: the sign of s at
        # b = 0 (+0 for n >= 2) decides the direction of dR/db there.
        s, power = jnp.zeros_like(x), x
        for k in range(n):
            s = b[k] * power if k == 0 else s + b[k] * power
            power = power * x
        return 1.0 + _abs(s)
    s = x * _horner(b, x) if n else jnp.zeros_like(x)
    return 1.0 + s


def rational(
    x: jax.Array, numerator: jax.Array, denominator: jax.Array, version: str = "A"
) -> jax.Array:
    """Evaluate R(x) = P(x) / Q(x) elementwise.

    Args:
      x: any shape. Low-precision floats (bfloat16, float16) are computed in float32 and
        the result is cast back, because the high powers of x lose all precision in 8 or
        11 mantissa bits; float32 and float64 inputs are computed in their own precision.
        Non-float inputs are computed and returned in float32.
      numerator: <float>[m + 1], a_0..a_m.
      denominator: <float>[n] = b_1..b_n for versions A, B and N, or <float>[n + 1] =
        b_0..b_n for version C.
      version: one of ``VERSIONS``.

    Returns:
      R(x), same shape as ``x``, in the dtype of ``x`` if it is a float, else float32.
    """
    check_version(version)
    x = jnp.asarray(x)
    numerator = jnp.asarray(numerator)
    denominator = jnp.asarray(denominator)
    _check_coefficient_shapes(numerator, denominator, version)
    if jnp.issubdtype(x.dtype, jnp.floating):
        out_dtype = x.dtype
        compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    else:
        out_dtype = compute_dtype = jnp.dtype(jnp.float32)
    xc = x.astype(compute_dtype)
    p = _horner(numerator.astype(compute_dtype), xc)
    q = _denominator(xc, denominator.astype(compute_dtype), version)
    return (p / q).astype(out_dtype)


def rational_denominator(x: jax.Array, denominator: jax.Array,
                         version: str = "A") -> jax.Array:
    """Q(x), the denominator :func:`rational` divides by, elementwise, computed as it
    computes it (in float32 at least); e.g. to see how close a learned rational comes to
    a pole (version N) or how far Q rises above its floor."""
    check_version(version)
    x = jnp.asarray(x)
    b = jnp.asarray(denominator)
    _check_coefficient_shapes(jnp.zeros(1), b, version)  # (any valid numerator)
    compute_dtype = (jnp.promote_types(x.dtype, jnp.float32)
                     if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32))
    return _denominator(x.astype(compute_dtype), b.astype(compute_dtype), version)

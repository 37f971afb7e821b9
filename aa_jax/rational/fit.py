"""Least-squares fits of R to a function, and the named initialisations made from them.

Named initialisations (``INITS``) are least-squares fits of familiar activations on
[-3, 3] (see :func:`fit_rational`), except ``one``, which is R(x) = 1 exactly in float32:
a = (1, 0, ..., 0) and b = 0 for A, B and N; for C, b = (0.9, 0, ..., 0), so that
Q = 0.1 + 0.9 = 1 (float32(0.1) + float32(0.9) rounds to exactly 1; in float64 R is 1 to
within 3e-8). At ``one`` the denominator still learns: dR/db_k = -|x|^k for A and -x^k
for B and N (C: -x^k, since t = 0.9 keeps it off the kink of |t|). Fitted C inits are
likewise scaled to Q(0) = 1 where that leaves R unchanged. Targets: ``leaky_relu`` has
slope 0.01 for x < 0, ``gelu`` is the exact x Phi(x) (erf, not tanh), ``swish`` is
x sigmoid(x).

``FIT_MEASURED_ERROR`` records, for the default degrees, the largest absolute error of
each fitted init over 10001 evenly spaced float32 points on [-3, 3] when evaluated by
:func:`rational` in float32 against the float64 target, as measured when the table was
made (``python -m aa_jax.rational`` prints it again). ``FIT_MAX_ERROR`` is the bound the
tests hold every machine to: 1e-12 for ``identity`` (exact up to the fit's last bits),
and for the others the larger of 1.5x the measurement and the measurement plus 8 float32
ulps of the target's largest value on [-3, 3], so that another CPU, BLAS or LAPACK,
which may round the fit and the evaluation differently in the last bits, still passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from scipy.special import erf, expit

from aa_jax.errors import UserError
from aa_jax.rational.function import (
    DEFAULT_DEGREES,
    _C_FLOOR,
    _denominator_size,
    _is_int,
    check_degrees,
    check_version,
    rational,
)

INITS = ("one", "identity", "relu", "leaky_relu", "gelu", "tanh", "sigmoid", "swish")

# Float64 targets of the named fits; ``one`` is set exactly instead of fitted.
_TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x >= 0.0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "tanh": np.tanh,
    "sigmoid": expit,
    "swish": lambda x: x * expit(x),
}

FIT_MEASURED_ERROR: dict[tuple[str, str], float] = {
    ("identity", "A"): 2.51e-16,
    ("identity", "B"): 1.91e-16,
    ("identity", "C"): 1.91e-16,
    ("identity", "N"): 1.91e-16,
    ("relu", "A"): 0.03,
    ("relu", "B"): 0.034,
    ("relu", "C"): 0.0336,
    ("relu", "N"): 0.034,
    ("leaky_relu", "A"): 0.0299,
    ("leaky_relu", "B"): 0.0336,
    ("leaky_relu", "C"): 0.0332,
    ("leaky_relu", "N"): 0.0336,
    ("gelu", "A"): 0.00286,
    ("gelu", "B"): 0.000929,
    ("gelu", "C"): 0.000929,
    ("gelu", "N"): 0.000929,
    ("tanh", "A"): 2.54e-06,
    ("tanh", "B"): 3.52e-06,
    ("tanh", "C"): 3.52e-06,
    ("tanh", "N"): 3.52e-06,
    ("sigmoid", "A"): 1.63e-07,
    ("sigmoid", "B"): 1.52e-07,
    ("sigmoid", "C"): 1.5e-07,
    ("sigmoid", "N"): 1.55e-07,
    ("swish", "A"): 1.35e-06,
    ("swish", "B"): 1.41e-06,
    ("swish", "C"): 1.35e-06,
    ("swish", "N"): 1.44e-06,
}


def _fit_bound(init: str, measured: float) -> float:
    if init == "identity":
        return 1e-12
    largest = float(np.max(np.abs(_TARGETS[init](np.linspace(-3.0, 3.0, 10001)))))
    return max(1.5 * measured, measured + 8 * float(np.finfo(np.float32).eps) * largest)


FIT_MAX_ERROR: dict[tuple[str, str], float] = {
    key: _fit_bound(key[0], measured) for key, measured in FIT_MEASURED_ERROR.items()}


def check_init(init: str) -> str:
    if not isinstance(init, str) or init not in INITS:
        raise UserError(f"Unknown rational init {init!r}; choose one of: {', '.join(INITS)}.")
    return init


# ---------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------


def _np_denominator(u: np.ndarray, b: np.ndarray, version: str):
    """Float64 Q(u) and dQ/db <[points, len(b)]>, for the least-squares refinement.

    For version A the fit uses c_k = |b_k| >= 0 directly (Q = 1 + sum c_k |u|^k), which
    is the same function but smooth in c, so the bounded solver converges quickly.
    """
    if version == "A":
        basis = np.abs(u)[:, None] ** np.arange(1, b.size + 1)
        return 1.0 + basis @ b, basis
    if version == "C":
        basis = u[:, None] ** np.arange(b.size)
        t = basis @ b
        # +1 at t = 0, the same one-sided slope jnp.abs uses.
        sign = np.where(t >= 0.0, 1.0, -1.0)
        return _C_FLOOR + np.abs(t), basis * sign[:, None]
    basis = u[:, None] ** np.arange(1, b.size + 1)
    s = basis @ b
    if version == "B":
        sign = np.where(s >= 0.0, 1.0, -1.0)
        return 1.0 + np.abs(s), basis * sign[:, None]
    return 1.0 + s, basis


def _normalise_c(u: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Rescale a version C fit to Q(0) = 1 without changing R on the fit points.

    Where t = b_0 + b_1 u + ... keeps one sign, Q = 0.1 + |t| is a plain polynomial, so
    (kappa a, kappa (0.1 + t) - 0.1) gives the same R for every kappa that keeps the new t
    non-negative: C has one redundant scale, along which the solver may drift to
    coefficients in the hundreds, which then train slowly. kappa = 1 / Q(0) fixes it at
    the scale of the other versions (and of the ``one`` init, b_0 = 0.9).
    """
    t = (u[:, None] ** np.arange(b.size)) @ b
    if np.all(t <= 0.0):
        b, t = -b, -t
    if not np.all(t > 0.0):
        return a, b  # t changes sign: a genuine kink, no free scale to remove.
    if _C_FLOOR + b[0] <= 0.0:
        return a, b  # Q(0) is not Q's value anywhere on an interval that excludes 0.
    kappa = 1.0 / (_C_FLOOR + b[0])
    if kappa * (_C_FLOOR + t.min()) < _C_FLOOR:
        return a, b  # Q(0) = 1 would push t below 0 somewhere on the interval.
    scaled = kappa * b
    scaled[0] = kappa * (_C_FLOOR + b[0]) - _C_FLOOR
    return kappa * a, scaled


def _starting_points(u: np.ndarray, y: np.ndarray, m: int, n: int, version: str):
    """Candidate (a, b) vectors for the nonlinear refinement.

    One is the best polynomial with a neutral denominator (Q = 1); the other linearises
    y Q = P, which is linear in (a, b) once the absolute values are dropped: for A with
    the constraint b >= 0 (then it is exact), for B and N as Q = 1 + s, and for C as
    Q = 0.1 + |0.9 + s|, which equals 1 + s wherever 1 + s >= 0.1.
    """
    vander = u[:, None] ** np.arange(m + 1)
    powers = u[:, None] ** np.arange(1, n + 1)
    poly = np.linalg.lstsq(vander, y, rcond=None)[0]
    neutral_b = np.zeros(_denominator_size(version, n))
    if version == "C":
        neutral_b[0] = 1.0 - _C_FLOOR
    starts = [np.concatenate([poly, neutral_b])]
    if version == "A":
        design = np.hstack([vander, -y[:, None] * np.abs(powers)])
        lower = np.concatenate([np.full(m + 1, -np.inf), np.zeros(n)])
        from scipy.optimize import lsq_linear  # here: the default init "one" fits nothing

        starts.append(lsq_linear(design, y, bounds=(lower, np.inf)).x)
    else:
        design = np.hstack([vander, -y[:, None] * powers])
        linear = np.linalg.lstsq(design, y, rcond=None)[0]
        if version == "C":
            linear = np.concatenate([linear[: m + 1], [1.0 - _C_FLOOR], linear[m + 1 :]])
        starts.append(linear)
    return starts


def _least_squares(u: np.ndarray, y: np.ndarray, m: int, n: int, version: str) -> np.ndarray:
    """Coefficients (a_0..a_m, b...) in u-space minimising sum (R(u) - y)^2, float64.

    Each starting point is refined with ``scipy.optimize.least_squares`` on the true
    formula of ``version``, with an analytic Jacobian. Rational fits are not unique (P
    and Q may share a factor, as in x = x Q / Q), so among the candidates whose cost is
    the lowest up to 0.1 % or rounding, the one with the smallest norm wins.
    """
    from scipy.optimize import least_squares  # here: the default init "one" fits nothing
    from threadpoolctl import threadpool_limits

    vander = u[:, None] ** np.arange(m + 1)

    def residuals(params):
        q, _ = _np_denominator(u, params[m + 1 :], version)
        return vander @ params[: m + 1] / q - y

    def jacobian(params):
        q, dq = _np_denominator(u, params[m + 1 :], version)
        p = vander @ params[: m + 1]
        return np.hstack([vander / q[:, None], -(p / q**2)[:, None] * dq])

    size = m + 1 + _denominator_size(version, n)
    if version == "A":
        lower = np.concatenate([np.full(m + 1, -np.inf), np.zeros(n)])
        bounds, method = (lower, np.full(size, np.inf)), "trf"
    else:
        lower, bounds, method = np.full(size, -np.inf), (-np.inf, np.inf), "lm"
    candidates = []
    # One BLAS thread: on matrices this small, threads only add overhead (seconds when
    # the CPUs are busy) and may change the last bits of the fit from run to run.
    with threadpool_limits(limits=1, user_api="blas"):
        for start in _starting_points(u, y, m, n, version):
            start = np.maximum(start, lower)
            fit = least_squares(
                residuals, start, jac=jacobian, bounds=bounds, method=method, x_scale="jac",
                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100 * (size + 1),
            )
            # The start competes too: from an exact start the solver may still wander
            # along the directions where P and Q share a factor.
            for params in (start, fit.x):
                r = residuals(params)
                if np.all(np.isfinite(r)):
                    candidates.append((0.5 * float(r @ r), params))
    if not candidates:
        raise UserError(
            "The rational fit diverged; try another version, lower degrees or a narrower interval."
        )
    best = min(cost for cost, _ in candidates)
    tie = best * 1e-3 + 1e-20 * float(y @ y)
    return min((p for cost, p in candidates if cost <= best + tie), key=np.linalg.norm)


def fit_rational(
    fn: Callable[[np.ndarray], np.ndarray],
    degrees: tuple[int, int] = DEFAULT_DEGREES,
    version: str = "A",
    interval: tuple[float, float] = (-3.0, 3.0),
    num_points: int = 2001,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of R to ``fn`` on ``num_points`` evenly spaced points.

    The fit runs in float64 on u = x / s with s = max(|lo|, |hi|), so the powers stay
    near 1 whatever the interval, and the coefficients are rescaled back afterwards.
    Linearised starting points are refined on the true formula of ``version`` (see
    ``_least_squares``); version C is then scaled to Q(0) = 1 (see ``_normalise_c``).
    Deterministic; a default fit takes a few tens of milliseconds.

    Args:
      fn: maps a float64 array of points to an array of the same shape.
      degrees: (m, n), non-negative ints.
      version: one of ``VERSIONS``.
      interval: (lo, hi), finite, lo < hi.
      num_points: at least the number of coefficients.

    Returns:
      (numerator <float32>[m + 1], denominator <float32>[n], or [n + 1] for version C).
      For version A the denominator is non-negative (only |b_k| matters).
    """
    m, n = check_degrees(degrees)
    check_version(version)
    if not callable(fn):
        raise UserError(f"fit_rational needs a callable to fit, got {type(fn).__name__}.")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise UserError(
            "Fit interval must be a pair of numbers (lo, hi) such as (-3.0, 3.0), "
            f"got {interval!r}."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise UserError(f"Fit interval must be finite with lo < hi, got {interval!r}.")
    size = m + 1 + _denominator_size(version, n)
    if not _is_int(num_points) or num_points < size:
        raise UserError(
            f"num_points must be an integer of at least {size} (the number of coefficients "
            f"to fit), got {num_points!r}."
        )

    x = np.linspace(lo, hi, int(num_points))
    y = np.asarray(fn(x), dtype=np.float64)
    if y.shape != x.shape or not np.all(np.isfinite(y)):
        raise UserError(
            "The function to fit must return finite values of the same shape as its input "
            f"on the interval {interval!r}; check its formula or narrow the interval."
        )
    scale = max(abs(lo), abs(hi))
    u = x / scale
    params = _least_squares(u, y, m, n, version)
    a, b = params[: m + 1], params[m + 1 :]
    if version == "C":
        a, b = _normalise_c(u, a, b)
    # Undo u = x / s: a_j u^j = (a_j / s^j) x^j, and likewise for b_k.
    a = a / scale ** np.arange(m + 1)
    first_power = 0 if version == "C" else 1
    b = b / scale ** np.arange(first_power, first_power + b.size)
    return a.astype(np.float32), b.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _cached_coefficients(init: str, version: str, degrees: tuple[int, int]):
    m, n = degrees
    if init == "one":
        a = np.zeros(m + 1, np.float32)
        a[0] = 1.0
        b = np.zeros(_denominator_size(version, n), np.float32)
        if version == "C":
            # float32(0.1) + float32(0.9) rounds to exactly 1 in float32.
            b[0] = 1.0 - _C_FLOOR
    else:
        a, b = fit_rational(_TARGETS[init], degrees, version)
    # Read-only: callers get copies, and the cached originals must never change.
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def init_coefficients(
    init: str = "one", version: str = "A", degrees: tuple[int, int] = DEFAULT_DEGREES
) -> tuple[np.ndarray, np.ndarray]:
    """Starting coefficients for a named init.

    ``one`` is exact (R = 1, see the module docstring); the others are
    ``fit_rational(target, degrees, version)`` on [-3, 3], computed once per
    (init, version, degrees) and cached, so building many layers is cheap.

    Returns:
      (numerator <float32>[m + 1], denominator <float32>[n] or [n + 1] for version C),
      fresh writable copies.
    """
    check_init(init)
    check_version(version)
    degrees = check_degrees(degrees)
    a, b = _cached_coefficients(init, version, degrees)
    return a.copy(), b.copy()


def measure_fit_error(init: str, version: str, degrees=DEFAULT_DEGREES) -> float:
    """Max |R(x) - target(x)| of a fitted init over 10001 float32 points on [-3, 3].

    R is evaluated by :func:`rational` in float32, the target in float64 at the same
    points; this is the measurement behind ``FIT_MEASURED_ERROR``.
    """
    x = np.linspace(-3, 3, 10001).astype(np.float32)
    a, b = init_coefficients(init, version, degrees)
    got = np.asarray(rational(x, a, b, version), np.float64)
    return float(np.max(np.abs(got - _TARGETS[init](x.astype(np.float64)))))

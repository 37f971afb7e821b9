"""Rational activation: formula, gradients, inits, fits, dtypes, errors and the module."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from aa_jax.errors import UserError
from aa_jax.rational import (
    FIT_MAX_ERROR,
    FIT_MEASURED_ERROR,
    measure_fit_error,
    INITS,
    VERSIONS,
    Rational,
    fit_rational,
    init_coefficients,
    rational,
)

SAFE_VERSIONS = ("A", "B", "C")
FITTED_INITS = tuple(i for i in INITS if i != "one")


def reference(x, a, b, version):
    """Each version's formula term by term in float64, independent of the library."""
    x = np.asarray(x, np.float64)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    p = sum(a[j] * x**j for j in range(a.size))
    if version == "A":
        q = 1.0 + sum(np.abs(b[k - 1] * x**k) for k in range(1, b.size + 1))
    elif version == "B":
        q = 1.0 + np.abs(sum(b[k - 1] * x**k for k in range(1, b.size + 1)))
    elif version == "C":
        q = 0.1 + np.abs(sum(b[k] * x**k for k in range(b.size)))
    else:
        q = 1.0 + sum(b[k - 1] * x**k for k in range(1, b.size + 1))
    return p / q


TARGETS = {
    "identity": lambda x: x,
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "gelu": lambda x: x * 0.5 * (1.0 + erf(x / np.sqrt(2.0))),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
}


def random_coefficients(rng, version, m, n):
    a = rng.uniform(-1, 1, m + 1)
    if version == "C":
        b = rng.uniform(-1, 1, n + 1)
    elif version == "N":
        # |s(x)| <= 0.8 for |x| <= 2, so Q >= 0.2: no poles near the test points.
        b = rng.uniform(-1, 1, n) * 0.8 / (max(n, 1) * 2.0 ** np.arange(1, n + 1))
    else:
        b = rng.uniform(-1, 1, n)
    return a.astype(np.float32), b.astype(np.float32)


# --- 1. the formula ---------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [(5, 4), (3, 1), (0, 0), (2, 6)])
@pytest.mark.parametrize("version", VERSIONS)
def test_matches_float64_formula(version, degrees):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 2000).astype(np.float32)
    a, b = random_coefficients(rng, version, *degrees)
    got = np.asarray(rational(x, a, b, version))
    ref = reference(x, a, b, version)
    assert got.dtype == np.float32 and got.shape == x.shape
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0)
    assert rel.max() <= 1e-5


def test_keeps_the_shape_of_x():
    a, b = init_coefficients("tanh")
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    got = rational(x, a, b)
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, reference(x, a, b, "A"), rtol=1e-5, atol=1e-6)


# --- 2. gradients -----------------------------------------------------------------------


def central_difference(f, v, h=1e-6):
    grad = np.zeros_like(v)
    for i in range(v.size):
        step = np.zeros_like(v)
        step[i] = h
        grad[i] = (f(v + step) - f(v - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("version", VERSIONS)
def test_gradients_match_finite_differences(version):
    rng = np.random.default_rng(1)
    # Away from x = 0, where |b_k x^k| has its kink.
    x = (rng.uniform(0.3, 1.8, 16) * rng.choice([-1.0, 1.0], 16)).astype(np.float64)
    a, b = (c.astype(np.float64) for c in random_coefficients(rng, version, 5, 4))
    with jax.enable_x64(True):

        def total(x_, a_, b_):
            return jnp.sum(rational(x_, a_, b_, version))

        gx, ga, gb = (np.asarray(g) for g in jax.grad(total, argnums=(0, 1, 2))(x, a, b))
        assert gx.dtype == ga.dtype == gb.dtype == np.float64
        f64 = lambda *args: float(total(*args))
        h = 1e-6
        r = lambda x_: np.asarray(rational(x_, a, b, version))
        fd_x = (r(x + h) - r(x - h)) / (2 * h)
        fd_a = central_difference(lambda v: f64(x, v, b), a)
        fd_b = central_difference(lambda v: f64(x, a, v), b)
    for got, fd in ((gx, fd_x), (ga, fd_a), (gb, fd_b)):
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7)
    assert np.all(gb != 0.0)


# --- 3. the `one` init ------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_one_init_is_exactly_one(version):
    a, b = init_coefficients("one", version)
    np.testing.assert_array_equal(a, [1, 0, 0, 0, 0, 0])
    expected_b = [0.9, 0, 0, 0, 0] if version == "C" else [0, 0, 0, 0]
    np.testing.assert_array_equal(b, np.float32(expected_b))
    x = np.concatenate([
        np.float32([0.0, 1e-3, -1e-3, 1.0, -1.0, 3.0, -3.0, 1e3, -1e3]),
        np.random.default_rng(2).normal(0, 10, 500).astype(np.float32),
    ])
    assert np.all(np.asarray(rational(x, a, b, version)) == 1.0)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("x", [2.0, -1.5])
def test_one_init_denominator_gradient_literal(version, x):
    """At R = P = Q = 1: dR/da_j = x^j, and dR/db_k = -|x|^k for A (the PAU kernel's
    copysign(1, +0) |x|^k), -x^k for B (copysign(1, s) with s = +0), C and N.

    All values are exact in float32 for these x.
    """
    a, b = init_coefficients("one", version)
    r = lambda a_, b_: rational(jnp.float32(x), a_, b_, version)
    ga, gb = jax.grad(r, argnums=(0, 1))(a, b)
    np.testing.assert_array_equal(ga, np.float32(x) ** np.arange(6))
    expected = {
        ("A", 2.0): [-2.0, -4.0, -8.0, -16.0],
        ("A", -1.5): [-1.5, -2.25, -3.375, -5.0625],
        ("B", 2.0): [-2.0, -4.0, -8.0, -16.0],
        ("B", -1.5): [1.5, -2.25, 3.375, -5.0625],
        ("C", 2.0): [-1.0, -2.0, -4.0, -8.0, -16.0],
        ("C", -1.5): [-1.0, 1.5, -2.25, 3.375, -5.0625],
        ("N", 2.0): [-2.0, -4.0, -8.0, -16.0],
        ("N", -1.5): [1.5, -2.25, 3.375, -5.0625],
    }[(version, x)]
    np.testing.assert_array_equal(gb, np.float32(expected))


def _pau_kernel_gradients(x, a, b, version):
    """dR/dx, dR/da, dR/db as the PAU CUDA kernels (versions A and B) write them, float64.

    A: Q = 1 + sum |b_k| |x|^k, dR/db_k = -P/Q^2 copysign(1, b_k) |x|^k,
       dR/dx = P'/Q - P/Q^2 copysign(1, x) sum_k k |b_k| |x|^(k-1).
    B: Q = 1 + |s|, s = sum b_k x^k, dR/db_k = -P/Q^2 copysign(1, s) x^k,
       dR/dx = P'/Q - P/Q^2 copysign(1, s) s'(x).
    """
    x, a, b = np.float64(x), np.float64(a), np.float64(b)
    k = np.arange(1, b.size + 1)
    p = np.sum(a * x ** np.arange(a.size))
    dp = np.sum(np.arange(1, a.size) * a[1:] * x ** np.arange(a.size - 1))
    if version == "A":
        q = 1 + np.sum(np.abs(b) * np.abs(x) ** k)
        dq_db = np.copysign(1.0, b) * np.abs(x) ** k
        dq_dx = np.copysign(1.0, x) * np.sum(k * np.abs(b) * np.abs(x) ** (k - 1))
    else:
        s = 0.0
        for kk in range(b.size):  # the kernel's order: b_1 x + b_2 x^2 + ...
            s = b[kk] * x ** (kk + 1) if kk == 0 else s + b[kk] * x ** (kk + 1)
        q = 1 + abs(s)
        dq_db = np.copysign(1.0, s) * x ** k
        dq_dx = np.copysign(1.0, s) * np.sum(k * b * x ** (k - 1))
    m = -p / q**2
    return dp / q + m * dq_dx, x ** np.arange(a.size) / q, m * dq_db


@pytest.mark.parametrize("version", ["A", "B"])
@pytest.mark.parametrize("b", [[0.0, 0.0, 0.0, 0.0], [-0.0, -0.0, -0.0, -0.0],
                               [0.3, -0.2, 0.0, -0.0], [-0.5, 0.25, -0.125, 0.0625]])
@pytest.mark.parametrize("x", [-2.0, -0.5, 0.0, -0.0, 0.75, 1.5])
def test_gradients_match_the_pau_kernels(version, b, x):
    """Every gradient of A and B equals the released kernels' formulas, signed zeros in
    the coefficients and in x included (float32 rounding, relative 1e-6)."""
    a = np.float32([0.1, 0.9, 0.2, -0.1, 0.05, 0.01])
    b = np.float32(b)
    gx, ga, gb = jax.grad(lambda x_, a_, b_: rational(x_, a_, b_, version), argnums=(0, 1, 2))(
        jnp.float32(x), jnp.asarray(a), jnp.asarray(b))
    want_x, want_a, want_b = _pau_kernel_gradients(x, a, b, version)
    np.testing.assert_allclose(gx, want_x, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ga, want_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, want_b, rtol=1e-6, atol=1e-7)
    # The signs at zero are the kernel's, not numerically close ones.
    np.testing.assert_array_equal(np.sign(gb), np.sign(want_b))


def test_zero_denominator_gets_gradient_for_nonzero_x():
    x = jnp.float32([-2.0, -0.5, 0.7, 3.0])
    powers = np.float32(x)[:, None] ** np.arange(1, 5)
    for version, basis in (("A", np.abs(powers)), ("B", powers)):
        a, b = init_coefficients("one", version)
        gb = jax.grad(lambda b_: jnp.sum(rational(x, a, b_, version) ** 2))(b)
        # d/db_k sum R^2 = sum 2 R dR/db_k with R = 1.
        np.testing.assert_allclose(gb, -2.0 * np.sum(basis, axis=0), rtol=1e-6)
        assert np.all(np.asarray(gb) != 0.0)


# --- 4. no overflow for large |x| -------------------------------------------------------


@pytest.mark.parametrize("version", SAFE_VERSIONS)
@pytest.mark.parametrize("init", FITTED_INITS)
def test_finite_for_large_inputs(init, version):
    a, b = init_coefficients(init, version)
    x = np.concatenate([np.linspace(-1e3, 1e3, 2001), [-1e3, 1e3, -999.9, 0.0]]).astype(np.float32)
    out = rational(x, a, b, version)
    assert np.all(np.isfinite(out))
    total = lambda x_, a_, b_: jnp.sum(rational(x_, a_, b_, version))
    grads = jax.grad(total, argnums=(0, 1, 2))(x, a, b)
    assert all(np.all(np.isfinite(g)) for g in grads)


# --- 5. fitted inits --------------------------------------------------------------------


def test_fit_error_table_covers_every_fitted_init_and_version():
    assert set(FIT_MAX_ERROR) == {(i, v) for i in FITTED_INITS for v in VERSIONS}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("init", FITTED_INITS)
def test_fitted_init_error_within_recorded_bound(init, version):
    assert measure_fit_error(init, version) <= FIT_MAX_ERROR[(init, version)]
    # The bound is a margin over the recorded measurement, never the measurement itself.
    recorded = FIT_MEASURED_ERROR[(init, version)]
    assert FIT_MAX_ERROR[(init, version)] >= (1e-12 if init == "identity" else 1.5 * recorded)


@pytest.mark.parametrize(
    "version, degrees, fn, numerator, denominator",
    [
        # A: b >= 0 is returned (only |b_k| matters).
        ("A", (2, 2),
         lambda x: (0.5 - x + 0.25 * x**2) / (1 + np.abs(0.5 * x) + np.abs(0.2 * x**2)),
         [0.5, -1.0, 0.25], [0.5, 0.2]),
        ("N", (1, 2), lambda x: (0.5 + x) / (1 - 0.2 * x + 0.1 * x**2), [0.5, 1.0], [-0.2, 0.1]),
        # C: (2 + x) / (0.1 + |1.9 + 0.5 x^2|) = (1 + 0.5 x) / (0.1 + |0.9 + 0.25 x^2|), the
        # form with Q(0) = 1 that the fit returns.
        ("C", (1, 2), lambda x: (2 + x) / (0.1 + np.abs(1.9 + 0.5 * x**2)),
         [1.0, 0.5], [0.9, 0.0, 0.25]),
    ],
)
def test_fit_recovers_an_exact_rational(version, degrees, fn, numerator, denominator):
    a, b = fit_rational(fn, degrees, version)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, numerator, atol=1e-6)
    np.testing.assert_allclose(b, denominator, atol=1e-6)


def test_fit_recovers_version_b_up_to_the_sign_of_b():
    # |s| = |-s|, so b and -b are the same function.
    fn = lambda x: (1 + x) / (1 + np.abs(0.5 * x - 0.3 * x**2))
    a, b = fit_rational(fn, (1, 2), "B")
    np.testing.assert_allclose(a, [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.abs(b), [0.5, 0.3], atol=1e-6)
    assert b[0] * b[1] < 0


def test_fit_on_a_wide_interval():
    # Powers up to 20^4 would be badly scaled without the rescaling to [-1, 1].
    fn = lambda x: (0.5 + x) / (1 - 0.2 * x + 0.1 * x**2)
    a, b = fit_rational(fn, (1, 2), "N", interval=(-20.0, 20.0))
    np.testing.assert_allclose(a, [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(b, [-0.2, 0.1], atol=1e-6)


def test_fit_is_deterministic_and_version_a_denominator_is_non_negative():
    first = fit_rational(np.tanh, (4, 3), "A")
    second = fit_rational(np.tanh, (4, 3), "A")
    for u, v in zip(first, second):
        np.testing.assert_array_equal(u, v)
    assert first[0].shape == (5,) and first[1].shape == (3,)
    assert np.all(first[1] >= 0)


@pytest.mark.parametrize("version, size", [("A", 3), ("B", 3), ("C", 4), ("N", 3)])
def test_init_coefficients_shapes_and_copies(version, size):
    a, b = init_coefficients("relu", version, (2, 3))
    assert a.shape == (3,) and b.shape == (size,)
    assert a.dtype == b.dtype == np.float32
    a[:] = 123.0
    b[:] = 123.0
    again = init_coefficients("relu", version, (2, 3))
    assert not np.any(again[0] == 123.0) and not np.any(again[1] == 123.0)


# --- 6. user errors ---------------------------------------------------------------------


def assert_one_sentence(error: pytest.ExceptionInfo, *fragments: str):
    message = str(error.value)
    assert message.endswith(".") and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_init():
    with pytest.raises(UserError) as error:
        init_coefficients("foo")
    assert_one_sentence(error, "Unknown rational init 'foo'", "one, identity, relu")


@pytest.mark.parametrize("call", [
    lambda: init_coefficients("one", "D"),
    lambda: rational(1.0, [1.0], [0.0], "a"),
    lambda: fit_rational(np.tanh, version="Z"),
])
def test_unknown_version(call):
    with pytest.raises(UserError) as error:
        call()
    assert_one_sentence(error, "Unknown rational version", "A, B, C, N")


@pytest.mark.parametrize(
    "degrees", [(-1, 4), (5, -1), (5.0, 4), (5, 4.5), (5,), (5, 4, 3), "54", (True, 4), None]
)
def test_bad_degrees(degrees):
    with pytest.raises(UserError) as error:
        init_coefficients("one", "A", degrees)
    assert_one_sentence(error, "degrees must be a pair of non-negative integers", "(5, 4)")


def test_bad_fields_of_the_module():
    x = jnp.ones(3)
    for module in (Rational(initialization="foo"), Rational(version="E"), Rational(degrees=(5, -4))):
        with pytest.raises(UserError):
            module.init_with_output(jax.random.key(0), x)


@pytest.mark.parametrize("numerator, denominator, version, fragment", [
    (np.ones((2, 3)), np.zeros(4), "A", "numerator must be a 1-D array of m + 1"),
    (np.ones(0), np.zeros(4), "A", "numerator must be a 1-D array of m + 1"),
    (np.ones(6), np.zeros((4, 1)), "B", "denominator for version B must be a 1-D array of n"),
    (np.ones(6), np.zeros(0), "C", "version C must be a 1-D array of n + 1"),
])
def test_bad_coefficient_shapes(numerator, denominator, version, fragment):
    with pytest.raises(UserError) as error:
        rational(jnp.ones(3), numerator, denominator, version)
    assert_one_sentence(error, fragment)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(fn="tanh"), "needs a callable"),
    (dict(fn=np.tanh, interval=(3.0, -3.0)), "lo < hi"),
    (dict(fn=np.tanh, interval=(0.0, np.inf)), "lo < hi"),
    (dict(fn=np.tanh, interval="wide"), "pair of numbers"),
    (dict(fn=np.tanh, num_points=9), "at least 10"),
    (dict(fn=np.tanh, num_points=100.0), "at least 10"),
    (dict(fn=lambda x: np.where(x > 2.0, np.nan, x)), "finite values"),
    (dict(fn=lambda x: x[:-1]), "same shape"),
])
def test_bad_fit_arguments(kwargs, fragment):
    with pytest.raises(UserError) as error:
        fit_rational(**kwargs)
    assert_one_sentence(error, fragment)


# --- 7. dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_is_computed_in_float32(dtype):
    a, b = init_coefficients("gelu")
    x = jnp.asarray(np.random.default_rng(3).normal(0, 2, 256), dtype)
    got = rational(x, a, b)
    assert got.dtype == dtype
    expected = rational(x.astype(jnp.float32), a, b).astype(dtype)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


def test_float64_input_is_computed_in_float64():
    a, b = init_coefficients("tanh")
    with jax.enable_x64(True):
        x = np.linspace(-2, 2, 101)
        got = rational(jnp.asarray(x), a, b)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, reference(x, a, b, "A"), rtol=1e-14)


def test_integer_input_gives_float32():
    a, b = init_coefficients("relu")
    got = rational(jnp.arange(-2, 3), a, b)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference(np.arange(-2, 3), a, b, "A"), rtol=1e-6)


# --- 8. the Flax module -----------------------------------------------------------------


def test_module_params_and_output():
    x = jnp.linspace(-4, 4, 33).reshape(3, 11)
    module = Rational()
    variables = module.init(jax.random.key(0), x)
    params = variables["params"]
    assert set(params) == {"numerator", "denominator"}
    assert params["numerator"].shape == (6,) and params["denominator"].shape == (4,)
    assert all(p.dtype == jnp.float32 for p in params.values())
    assert sum(p.size for p in jax.tree.leaves(params)) == 10
    np.testing.assert_array_equal(params["numerator"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(params["denominator"], [0, 0, 0, 0])

    trained = {"numerator": jnp.float32([0.1, 0.9, 0.2, -0.1, 0.05, 0.01]),
               "denominator": jnp.float32([0.3, -0.2, 0.1, 0.02])}
    pure = lambda x_: rational(x_, trained["numerator"], trained["denominator"], "A")
    np.testing.assert_array_equal(module.apply({"params": trained}, x), pure(x))
    # Under jit XLA fuses each program its own way, so two programs may round the last
    # bit differently: a few float32 ulps, never more.
    np.testing.assert_allclose(jax.jit(module.apply)({"params": trained}, x), jax.jit(pure)(x),
                               rtol=4 * np.finfo(np.float32).eps, atol=0)


@pytest.mark.parametrize("version, count", [("A", 10), ("B", 10), ("C", 11), ("N", 10)])
def test_module_fitted_init(version, count):
    x = jnp.linspace(-3, 3, 7)
    _, variables = Rational(version=version, initialization="swish").init_with_output(jax.random.key(0), x)
    params = variables["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == count
    a, b = init_coefficients("swish", version)
    np.testing.assert_array_equal(params["numerator"], a)
    np.testing.assert_array_equal(params["denominator"], b)
    out = Rational(version=version, initialization="swish").apply(variables, x)
    np.testing.assert_array_equal(out, rational(x, a, b, version))


def test_module_inside_a_parent():
    class Parent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Rational(version="B", degrees=(3, 2), initialization="tanh", name="act")(nn.Dense(2)(x))

    x = jnp.ones((4, 3))
    variables = Parent().init(jax.random.key(0), x)
    act = variables["params"]["act"]
    a, b = init_coefficients("tanh", "B", (3, 2))
    np.testing.assert_array_equal(act["numerator"], a)
    np.testing.assert_array_equal(act["denominator"], b)
    assert Parent().apply(variables, x).shape == (4, 2)

"""Gumbel-softmax switch: sampling, straight-through, inference, probabilities, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aa_jax.errors import UserError
from aa_jax.switch import ADAPTER, IDENTITY, GumbelSwitch, is_selected, switch_probabilities


def params(logits):
    return {"params": {"logits": jnp.asarray(logits, jnp.float32)}}


def sample(logits, key, batch_size=8, **fields):
    module = GumbelSwitch(num_choices=len(logits), **fields)
    return module.apply(params(logits), batch_size, False, rngs={"gumbel": key})


def test_params_start_at_zero():
    variables = GumbelSwitch(num_choices=3).init(jax.random.key(0), 4, True)
    logits = variables["params"]["logits"]
    assert logits.shape == (3,) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(logits, [0.0, 0.0, 0.0])


def test_soft_samples_are_distributions():
    y = sample([0.4, -0.3, 1.2], jax.random.key(1), batch_size=64, temperature=0.5)
    assert y.shape == (64, 3) and y.dtype == jnp.float32
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1))
    np.testing.assert_allclose(np.sum(y, axis=-1), 1.0, rtol=0, atol=1e-6)


def test_each_example_gets_its_own_noise():
    y = np.asarray(sample([0.0, 0.0], jax.random.key(2), batch_size=32, temperature=1.0))
    assert len({tuple(row) for row in y}) == 32


def test_same_key_same_sample_and_different_key_different_sample():
    first = sample([0.2, -0.1], jax.random.key(3), temperature=1.0)
    again = sample([0.2, -0.1], jax.random.key(3), temperature=1.0)
    other = sample([0.2, -0.1], jax.random.key(4), temperature=1.0)
    np.testing.assert_array_equal(first, again)
    assert not np.any(np.asarray(first) == np.asarray(other))


def test_temperature_matches_the_closed_form():
    """y = softmax((logits + g) / tau), checked with the module's own noise g.

    With zero logits and tau = 1 a sample is softmax(g), so log(sample) = g - const per
    example: the noise is recovered up to a constant, which softmax ignores. The noise only
    depends on the key (not on the logits or tau), so the same key gives the same g.
    """
    key = jax.random.key(5)
    unit = sample([0.0, 0.0, 0.0], key, batch_size=16, temperature=1.0)
    noise = np.log(np.asarray(unit, np.float64))
    logits = np.array([0.3, -0.2, 0.1])
    for tau in (0.1, 0.5, 2.0):
        z = (logits + noise) / tau
        expected = np.exp(z - z.max(axis=-1, keepdims=True))
        expected /= expected.sum(axis=-1, keepdims=True)
        got = sample(list(logits), key, batch_size=16, temperature=tau)
        # float32 rounds each z to within |z| eps/2 (the noise recovered through log, the
        # sum, the division); softmax's slope is at most 1/2, so a few roundings of the
        # largest |z| bound the error on any machine.
        bound = 4 * np.finfo(np.float32).eps * np.abs(z).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def test_gumbel_max_frequencies_follow_the_probabilities():
    # argmax(logits + Gumbel noise) picks choice i with probability softmax(logits)_i.
    y = sample([math.log(0.7), math.log(0.3)], jax.random.key(6), batch_size=20000, hard=True)
    frequency = float(np.mean(np.asarray(y)[:, 0]))
    assert abs(frequency - 0.7) < 0.015  # ~4.6 standard errors


def test_hard_forward_is_exactly_one_hot_and_matches_the_soft_argmax():
    key = jax.random.key(7)
    logits = [0.5, -0.4, 0.2]
    hard = np.asarray(sample(logits, key, batch_size=50, temperature=0.7, hard=True))
    soft = np.asarray(sample(logits, key, batch_size=50, temperature=0.7))
    assert set(np.unique(hard)) == {0.0, 1.0}
    np.testing.assert_array_equal(hard.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(hard.argmax(axis=-1), soft.argmax(axis=-1))


def test_hard_gradient_equals_soft_gradient():
    """Straight-through: d/dlogits of a loss linear in the weights is the soft one."""
    key = jax.random.key(8)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)

    def loss(logits, hard):
        y = GumbelSwitch(temperature=0.5, hard=hard).apply(
            params(logits), 16, False, rngs={"gumbel": key})
        return jnp.sum(y * weights)

    logits = jnp.float32([0.3, -0.1])
    hard_grad = jax.grad(loss)(logits, True)
    soft_grad = jax.grad(loss)(logits, False)
    np.testing.assert_array_equal(hard_grad, soft_grad)
    assert np.all(np.abs(np.asarray(soft_grad)) > 1e-3)


@pytest.mark.parametrize("logits, choice", [([0.3, -0.2], 0), ([-1.0, 2.0], 1), ([0.0, 0.0], 0),
                                            ([0.1, 0.5, 0.2], 1)])
def test_deterministic_is_argmax_one_hot_without_rngs(logits, choice):
    module = GumbelSwitch(num_choices=len(logits))
    expected = np.tile(np.eye(len(logits))[choice], (5, 1))
    np.testing.assert_array_equal(module.apply(params(logits), 5, True), expected)
    jitted = jax.jit(module.apply, static_argnums=(1, 2))
    np.testing.assert_array_equal(jitted(params(logits), 5, True), expected)


@pytest.mark.parametrize("deterministic", [True, False])
def test_sown_probabilities_are_softmax_of_logits(deterministic):
    module = GumbelSwitch()
    _, state = module.apply(params([math.log(3.0), 0.0]), 4, deterministic,
                            rngs={"gumbel": jax.random.key(9)}, mutable=["intermediates"])
    (probs,) = state["intermediates"]["switch_probs"]
    np.testing.assert_allclose(probs, [0.75, 0.25], rtol=1e-6)


def test_switch_probabilities():
    np.testing.assert_allclose(switch_probabilities([math.log(3.0), 0.0]), [0.75, 0.25], rtol=1e-6)
    batched = switch_probabilities(np.log([[1.0, 1.0, 2.0], [1.0, 3.0, 4.0]]))
    np.testing.assert_allclose(batched, [[0.25, 0.25, 0.5], [0.125, 0.375, 0.5]], rtol=1e-6)


def test_is_selected_convention():
    # The released branch order (identity, adapter): selected iff logit_adapter >
    # logit_identity; an exact tie runs the identity.
    assert (IDENTITY, ADAPTER) == (0, 1)
    assert bool(is_selected([-0.5, 0.5]))
    assert not bool(is_selected([0.5, -0.5]))
    assert not bool(is_selected([0.0, 0.0]))
    assert not bool(is_selected([0.3, 0.3]))
    assert bool(is_selected([0.5, -0.5], adapter_index=0))
    batched = is_selected([[1.0, 0.0], [0.0, 1.0], [2.0, 2.5], [1.0, 1.0]])
    np.testing.assert_array_equal(batched, [False, True, True, False])


@pytest.mark.parametrize("logits", [[0.0, 0.0], [0.2, 0.1], [0.1, 0.2], [-3.0, -3.0]])
def test_is_selected_agrees_with_the_inference_forward(logits):
    # Ties included: both resolve them to the identity (choice 0), so reports match what
    # inference runs.
    y = GumbelSwitch().apply(params(logits), 1, True)
    assert bool(is_selected(logits)) == bool(y[0, ADAPTER] == 1.0)
    if logits[0] == logits[1]:
        assert y[0, IDENTITY] == 1.0


def assert_one_sentence(error, fragment):
    message = str(error.value)
    assert message.endswith(".") and ". " not in message and fragment in message, message


@pytest.mark.parametrize("fields, batch_size, fragment", [
    (dict(num_choices=1), 2, "num_choices must be an integer of at least 2"),
    (dict(num_choices=2.0), 2, "num_choices must be an integer of at least 2"),
    (dict(temperature=0.0), 2, "temperature must be a positive finite number"),
    (dict(temperature=-1.0), 2, "temperature must be a positive finite number"),
    (dict(temperature=float("nan")), 2, "temperature must be a positive finite number"),
    (dict(temperature=float("inf")), 2, "temperature must be a positive finite number"),
    (dict(), -1, "batch_size must be a non-negative integer"),
    (dict(), 2.5, "batch_size must be a non-negative integer"),
])
def test_bad_fields(fields, batch_size, fragment):
    with pytest.raises(UserError) as error:
        GumbelSwitch(**fields).init(jax.random.key(0), batch_size, True)
    assert_one_sentence(error, fragment)


@pytest.mark.parametrize("logits, index, fragment", [
    ([1.0], 0, "at least 2 choices"),
    (1.0, 0, "at least 2 choices"),
    ([1.0, 0.0], 2, "adapter_index must be an integer in [0, 2)"),
    ([1.0, 0.0], -1, "adapter_index must be an integer in [0, 2)"),
])
def test_bad_is_selected_arguments(logits, index, fragment):
    with pytest.raises(UserError) as error:
        is_selected(logits, index)
    assert_one_sentence(error, fragment)

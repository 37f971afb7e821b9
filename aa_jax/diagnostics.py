"""What a run records about its training beyond the loss, per epoch in ``metrics.jsonl``.

Measured inside the train step, at every step, on the values the step computes anyway
(they change nothing it computes):

* each trainable group's gradient norm (:func:`group_norms`): the global norm, before
  clipping, of the gradients of the group's parameters (the groups of
  :func:`aa_jax.params.param_groups`: ``adapter``, ``rational``, ``switch``, ``head``);
* the range of the values entering each encoder layer's rational (:func:`input_ranges`):
  the (min, max) that :class:`aa_jax.rational.Rational` sows, over every element of its
  input (every bottleneck unit at every position of the batch, padding included).

At the end of each epoch :func:`epoch_record` turns the epoch's steps into the record's
``grad_norms`` (per group, the mean and the largest norm over the steps) and, for a model
with rationals, ``rationals`` (per layer: the epoch's input range, and from the
coefficients at the epoch's end their L2 norms and, over 1001 evenly spaced points of
the input range, the smallest and largest R(x) and the smallest Q(x)). Numbers keep 6
significant digits; a value that is not finite is written as null.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict

from aa_jax.params import layer_params, param_groups, param_role, param_rules
from aa_jax.rational import rational, rational_denominator
from aa_jax.rational.layer import INPUT_RANGE

# The step's measurements, as its metrics name them.
GRAD_NORMS, INPUT_RANGES = "grad_norms", "input_ranges"
STEP_KEYS = (GRAD_NORMS, INPUT_RANGES)
# Points of the input range at which a rational's output and denominator are measured.
CURVE_POINTS = 1001
DIGITS = 6


def has_rationals(architecture) -> bool:
    """Whether a model of ``architecture`` (None: none) has rational activations, whose
    inputs the step then observes."""
    return architecture is not None and any(
        spec.adapter and spec.activation == "rational" for spec in architecture.layers)


def group_norms(grads: dict) -> dict[str, jax.Array]:
    """``{group: <float32>[]}``: the global norm of each trainable group's gradients
    (``grads`` has the layout of the trainable params)."""
    groups = param_groups(grads)
    by_group: dict[str, list] = {}
    for path, g in flatten_dict(grads).items():
        by_group.setdefault(groups[path], []).append(g)
    return {group: optax.tree.norm(leaves) for group, leaves in sorted(by_group.items())}


def input_ranges(intermediates: dict) -> dict[int, jax.Array]:
    """``{layer: <float32>[2]}``: the (min, max) of the values that entered each encoder
    layer's rational in one forward pass, from the ``intermediates`` collection the
    model's apply returned (either layout)."""
    ranges = {}
    for layer, tree in layer_params(intermediates).items():
        found = [v for path, calls in flatten_dict(tree).items() if path[-1] == INPUT_RANGE
                 for v in calls]
        if found:
            seen = jnp.stack(found)
            ranges[layer] = jnp.stack([jnp.min(seen[:, 0]), jnp.max(seen[:, 1])])
    return ranges


def step_measurements(grads: dict, intermediates: dict) -> dict[str, Any]:
    """What the train step adds to its metrics (traced inside it): ``grad_norms`` and,
    where rationals sowed their inputs, ``input_ranges``.

    The norms read the gradients through an optimization barrier: XLA may otherwise fuse
    their reductions with those that compute the gradients, which can change how it sums
    a gradient (by an ulp, as in the seeds' vmapped step), and a measured step must
    compute what an unmeasured one does, bit for bit."""
    measured: dict[str, Any] = {GRAD_NORMS: group_norms(jax.lax.optimization_barrier(grads))}
    ranges = input_ranges(intermediates)
    if ranges:
        measured[INPUT_RANGES] = ranges
    return measured


def rational_coefficients(trainable: dict) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: {"numerator": a, "denominator": b}}`` of every rational in ``trainable``
    (either layout), on the host."""
    rules = param_rules()
    found: dict[int, dict[str, np.ndarray]] = {}
    for path, value in flatten_dict(trainable).items():
        role = param_role(path, rules)
        if role.group != "rational":
            continue
        # One process's copy: a replicated array is whole in each.
        value = np.asarray(value.addressable_data(0) if isinstance(value, jax.Array)
                           else value)
        rows = value if role.stacked else value[None]
        for layer, row in zip(role.layers, rows):
            found.setdefault(layer, {})[path[-1]] = row
    return dict(sorted(found.items()))


@functools.partial(jax.jit, static_argnames="version")
def _curve(numerator, denominator, low, high, version: str):
    """(min R, max R, min Q) over ``CURVE_POINTS`` evenly spaced points of [low, high]."""
    x = jnp.linspace(low, high, CURVE_POINTS, dtype=jnp.float32)
    r = rational(x, numerator, denominator, version)
    return jnp.min(r), jnp.max(r), jnp.min(rational_denominator(x, denominator, version))


def rational_summary(numerator: np.ndarray, denominator: np.ndarray, version: str,
                     seen: np.ndarray | None) -> dict[str, float | None]:
    """One rational's entry of ``rationals``: ``seen`` holds the epoch's steps' input
    ranges <[steps, 2]> (None: it saw no input)."""
    entry: dict[str, float | None] = {}
    low = high = math.nan
    if seen is not None:
        low, high = float(np.min(seen[:, 0])), float(np.max(seen[:, 1]))
        entry.update(input_min=_round(low), input_max=_round(high))
    entry.update(numerator_norm=_round(np.linalg.norm(np.asarray(numerator, np.float64))),
                 denominator_norm=_round(np.linalg.norm(np.asarray(denominator, np.float64))))
    if math.isfinite(low) and math.isfinite(high):
        out_min, out_max, q_min = _curve(numerator, denominator, np.float32(low),
                                         np.float32(high), version)
        entry.update(output_min=_round(out_min), output_max=_round(out_max),
                     denominator_min=_round(q_min))
    return entry


def epoch_record(steps: dict[str, Any], trainable: dict, version: str) -> dict[str, Any]:
    """The ``grad_norms`` and ``rationals`` entries of an epoch's ``metrics.jsonl`` record,
    from its steps' measurements (:func:`step_measurements` on the host, each leaf stacked
    over the steps: <[steps, ...]>) and the trainable params at the epoch's end; ``version``
    is the rationals' (``Architecture.rational_version``)."""
    record: dict[str, Any] = {}
    norms = steps.get(GRAD_NORMS) or {}
    if norms:
        record[GRAD_NORMS] = {
            group: {"mean": _round(np.mean(np.asarray(v, np.float64))),
                    "max": _round(np.max(np.asarray(v, np.float64)))}
            for group, v in norms.items()}
    coefficients = rational_coefficients(trainable)
    if coefficients:
        ranges = steps.get(INPUT_RANGES) or {}
        record["rationals"] = {
            str(layer): rational_summary(c["numerator"], c["denominator"], version,
                                         None if layer not in ranges
                                         else np.asarray(ranges[layer]))
            for layer, c in coefficients.items()}
    return record


def stack_steps(measured: list[dict]) -> dict[str, Any]:
    """The steps' measurements (host trees, one per step) as one tree whose leaves stack
    them along a leading step axis."""
    if not measured:
        return {}
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *measured)


def _round(value) -> float | None:
    value = float(value)
    return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else None

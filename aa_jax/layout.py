"""The two layouts of the encoder's layers in a parameter tree, and conversions between them.

- *per layer* (``encoder/layer_{i}/...``): Hugging Face's names, the layout of a
  pretrained backbone as :func:`aa_jax.models.loader.load_pretrained` returns it, and of
  everything aa_jax writes to disk (checkpoints, exports), so files do not depend on how
  the model runs;
- *stacked* (``encoder/layers_{first}_{last}/...``): the scanned encoder runs each run of
  consecutive layers with the same adapter spec as one ``nn.scan`` whose parameters carry
  a leading axis of ``last - first + 1`` layers.

:func:`unstack_layers` and :func:`stack_layers` convert any pytree that holds parameter
trees (params, optimizer states, gradients) between the two; both are exact (slicing and
stacking). Nothing here knows a model family: a layer is found under any ``encoder``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

# One encoder layer in either layout.
LAYER = r"(?:layer_\d+|layers_\d+_\d+)"
_ONE = re.compile(r"^layer_(\d+)$")
_STACK = re.compile(r"^layers_(\d+)_(\d+)$")


def layer_span(name: str) -> tuple[tuple[int, ...], bool] | None:
    """``layer_3`` -> ((3,), False); ``layers_0_5`` -> ((0, ..., 5), True); else None."""
    if m := _ONE.match(name):
        return (int(m.group(1)),), False
    if m := _STACK.match(name):
        first, last = int(m.group(1)), int(m.group(2))
        return tuple(range(first, last + 1)), True
    return None


def stack_name(first: int, last: int) -> str:
    """The module name of the scanned run of layers ``first..last`` (inclusive)."""
    return f"layers_{first}_{last}"


def _map_encoders(tree: Any, fn) -> Any:
    """``tree`` with every ``encoder`` dict (at any depth, also inside optimizer states,
    whose containers nest dicts in tuples in dicts) replaced by ``fn(encoder)``."""
    def is_dict(x):
        return isinstance(x, dict)

    def visit(node):
        if is_dict(node):
            return {k: fn(v) if k == "encoder" and is_dict(v) else visit(v)
                    for k, v in node.items()}
        if not any(is_dict(x) for x in jax.tree.leaves(node, is_leaf=is_dict)):
            return node  # an array, or a container without dicts
        return jax.tree.map(lambda x: visit(x) if is_dict(x) else x, node, is_leaf=is_dict)

    return visit(tree)


def unstack_layers(tree: Any) -> Any:
    """``tree`` in the per-layer layout: each ``layers_{a}_{b}`` entry becomes
    ``layer_{a}`` ... ``layer_{b}``, its arrays sliced along their leading axis."""
    def encoder(enc: dict) -> dict:
        out = {}
        for name, sub in enc.items():
            span = layer_span(name)
            if span is None or not span[1]:
                out[name] = sub
                continue
            for j, i in enumerate(span[0]):
                out[f"layer_{i}"] = jax.tree.map(lambda x, j=j: x[j], sub)
        return out

    return _map_encoders(tree, encoder)


def stack_layers(tree: Any, segments: Sequence[tuple[int, int]]) -> Any:
    """``tree`` in the stacked layout of ``segments`` (``(first, last)`` runs of layers):
    ``layer_{first}`` ... ``layer_{last}`` become one ``layers_{first}_{last}`` entry.
    Layers no segment covers stay as they are; no segments: ``tree`` unchanged."""
    if not segments:
        return tree

    def encoder(enc: dict) -> dict:
        out = {k: v for k, v in enc.items() if not _ONE.match(k)}
        covered = set()
        for first, last in segments:
            names = [f"layer_{i}" for i in range(first, last + 1)]
            if not all(n in enc for n in names):
                continue
            out[stack_name(first, last)] = jax.tree.map(
                lambda *xs: jnp.stack(xs), *[enc[n] for n in names])
            covered.update(names)
        out.update({k: v for k, v in enc.items() if _ONE.match(k) and k not in covered})
        return out

    return _map_encoders(tree, encoder)


def segments_of(tree: Any) -> list[tuple[int, int]]:
    """The stacked segments of the first ``encoder`` found in ``tree`` ([] if per layer)."""
    found: list[tuple[int, int]] = []

    def encoder(enc: dict) -> dict:
        if not found:
            for name in enc:
                span = layer_span(name)
                if span and span[1]:
                    found.append((span[0][0], span[0][-1]))
            found.sort()
            if not found:
                found.append((-1, -1))  # per layer; stop looking
        return enc

    _map_encoders(tree, encoder)
    return [s for s in found if s != (-1, -1)]


def stack_layers_like(tree: Any, like: Any) -> Any:
    """``tree`` (per layer) in the layout of ``like``."""
    return stack_layers(tree, segments_of(like))


def layer_params(params: dict) -> dict[int, dict]:
    """``{i: params of encoder layer i}`` (per-layer layout), from either layout; only the
    layers that have parameters in ``params`` (e.g. the trainable subtree)."""
    flat = flatten_dict(unstack_layers(params))
    layers: dict[int, dict] = {}
    for path, value in flat.items():
        for k, name in enumerate(path[:-1]):
            if path[k - 1:k] == ("encoder",) and (span := layer_span(name)):
                layers.setdefault(span[0][0], {})[path[k + 1:]] = value
                break
    return {i: unflatten_dict(p) for i, p in sorted(layers.items())}

"""Parameter paths in one place: what each parameter is, and the two layouts of the layers.

Every parameter of a :class:`~aa_jax.models.bert.BertForSequenceClassification` has a
*role* (:func:`param_role`): its group (``frozen`` backbone, ``adapter``, ``rational``,
``switch`` or ``head``) and the encoder layers it belongs to. The freezing rules, the
learning-rate groups, the export, the learned architecture and the weight counts all ask
this module, and no other code parses a parameter path.

The encoder's layers come in two layouts:

- *per layer* (``encoder/layer_{i}/...``): Hugging Face's names, the layout of a
  pretrained backbone as :func:`aa_jax.models.loader.load_pretrained` returns it, and of
  everything aa_jax writes to disk (checkpoints, exports), so files do not depend on how
  the model runs;
- *stacked* (``encoder/layers_{first}_{last}/...``): the scanned encoder runs each run of
  consecutive layers with the same adapter spec as one ``nn.scan`` whose parameters carry
  a leading axis of ``last - first + 1`` layers.

:func:`unstack_layers` and :func:`stack_layers` convert any pytree that holds parameter
trees (params, optimizer states, gradients) between the two; both are exact (slicing and
stacking).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

# One encoder layer in either layout.
_LAYER = r"(?:layer_\d+|layers_\d+_\d+)"
_ONE = re.compile(r"^layer_(\d+)$")
_STACK = re.compile(r"^layers_(\d+)_(\d+)$")

# Every parameter's group, by its path ("bert/encoder/layer_3/output/slot/adapter/down/
# kernel"). Each path must match exactly one rule (big_vision's _split_frozen habit): a
# parameter the table does not know, or knows twice, is an error, never silently frozen
# or trained. "adapter" and "head" train with --lr, "switch" with --switch-lr, "rational"
# with --rational-lr. Adapter kinds add their own rules (``AdapterKind.param_rules``).
BACKBONE_RULES: tuple[tuple[str, str], ...] = (
    (r"^bert/embeddings/(word|position|token_type)_embeddings/embedding$", "frozen"),
    (r"^bert/embeddings/LayerNorm/(scale|bias)$", "frozen"),
    (rf"^bert/encoder/{_LAYER}/attention/self/(query|key|value)/(kernel|bias)$", "frozen"),
    (rf"^bert/encoder/{_LAYER}/attention/output/dense/(kernel|bias)$", "frozen"),
    (rf"^bert/encoder/{_LAYER}/(attention/output|output)/LayerNorm/(scale|bias)$", "frozen"),
    (rf"^bert/encoder/{_LAYER}/(intermediate|output)/dense/(kernel|bias)$", "frozen"),
    (r"^bert/pooler/dense/(kernel|bias)$", "frozen"),
    (r"^classifier/(kernel|bias)$", "head"),
)
GROUPS = ("frozen", "adapter", "rational", "switch", "head")


def param_rules() -> tuple[tuple[str, str], ...]:
    """The backbone's rules and every adapter kind's (see :data:`aa_jax.adapters.KINDS`)."""
    from aa_jax.adapters import KINDS

    rules = list(BACKBONE_RULES)
    for kind in KINDS.values():
        rules += [(rf"^bert/encoder/{_LAYER}/{pattern}$", group)
                  for pattern, group in kind.param_rules]
    return tuple(rules)


@dataclasses.dataclass(frozen=True)
class Role:
    """What a parameter is.

    Attributes:
      group: ``frozen``, ``adapter``, ``rational``, ``switch`` or ``head``.
      layers: the encoder layers the array holds (one for the per-layer layout, the
        leading axis's layers for the stacked one), or ``()`` outside the encoder.
      stacked: whether the array's leading axis runs over ``layers``.
    """

    group: str
    layers: tuple[int, ...] = ()
    stacked: bool = False


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


def param_role(path: Sequence[str] | str, rules=None) -> Role:
    """The role of the parameter at ``path`` (a tuple of names or a "/"-joined string).

    Raises ValueError naming the parameter when it matches no rule or several: a new
    kind of parameter must be given a role on purpose.
    """
    name = path if isinstance(path, str) else "/".join(path)
    hits = [group for pattern, group in (rules or param_rules()) if re.match(pattern, name)]
    if len(hits) != 1:
        raise ValueError(f"parameter {name} matches {len(hits)} rules of the parameter "
                         f"roles ({', '.join(hits) or 'none'}); give it exactly one role")
    parts = name.split("/")
    if len(parts) > 2 and parts[1] == "encoder" and (span := layer_span(parts[2])):
        return Role(hits[0], *span)
    return Role(hits[0])


def param_groups(params: dict) -> dict[tuple[str, ...], str]:
    """Each parameter's group, keyed by its path tuple."""
    rules = param_rules()
    return {path: param_role(path, rules).group for path in flatten_dict(params)}


def partition(params: dict) -> tuple[dict, dict]:
    """Splits params into (trainable, frozen) subtrees by their roles."""
    groups = param_groups(params)
    flat = flatten_dict(params)
    trainable = {k: v for k, v in flat.items() if groups[k] != "frozen"}
    frozen = {k: v for k, v in flat.items() if groups[k] == "frozen"}
    return unflatten_dict(trainable), unflatten_dict(frozen)


def merge(trainable: dict, frozen: dict) -> dict:
    """The full params of a model from its two parts (their paths are disjoint)."""
    return unflatten_dict({**flatten_dict(frozen), **flatten_dict(trainable)})


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# -- the two layouts --------------------------------------------------------------------

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

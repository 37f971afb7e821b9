"""Parameter roles in one place: what each parameter is.

Every parameter of a sequence classifier (:mod:`aa_jax.models`) has a *role*
(:func:`param_role`): its group (``frozen`` backbone, ``adapter``, ``rational``,
``switch`` or ``head``) and the encoder layers it belongs to. The freezing rules, the
learning-rate groups, the export, the learned architecture and the weight counts all ask
this module, and no other code parses a parameter path. The rules come from their owners:
each model family names its own weights (:attr:`aa_jax.models.Family.rules`), the shared
transformer layer its (:data:`aa_jax.models.layers.LAYER_RULES`), each adapter kind its
(``AdapterKind.param_rules``), the selection its (:data:`aa_jax.selection.SELECTION_RULES`). The two layouts of the layers (per layer and stacked) are
:mod:`aa_jax.layout`'s, re-exported here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax.adapters import KINDS
from aa_jax.layout import (LAYER, layer_params, layer_span, segments_of,  # noqa: F401
                           stack_layers, stack_layers_like, stack_name, unstack_layers)
from aa_jax.models.registry import FAMILIES
from aa_jax.models.layers import LAYER_RULES
from aa_jax.selection import SELECTION_RULES

# Every parameter's group, by its path ("bert/encoder/layer_3/output/slot/adapter/down/
# kernel"). Each path must match exactly one rule (big_vision's _split_frozen habit): a
# parameter the table does not know, or knows twice, is an error, never silently frozen
# or trained. "adapter" and "head" train with --lr, "switch" with --switch-lr, "rational"
# with --rational-lr.
HEAD_RULES: tuple[tuple[str, str], ...] = ((r"^classifier/(kernel|bias)$", "head"),)
GROUPS = ("frozen", "adapter", "rational", "switch", "head")


def layer_rules() -> tuple[tuple[str, str], ...]:
    """The rules of one encoder layer's parameters, relative to the layer: the shared
    transformer layer's and every adapter kind's (see :data:`aa_jax.adapters.KINDS`)."""
    rules = list(LAYER_RULES)
    for kind in KINDS.values():
        rules += list(kind.param_rules)
    return tuple(rules)


def param_rules() -> tuple[tuple[str, str], ...]:
    """Every family's own rules under its prefix, the layer rules under any family's
    ``encoder``, and the head's."""
    rules = []
    for family in FAMILIES.values():
        rules += [(rf"^{family.prefix}/{pattern}$", group) for pattern, group in family.rules]
    prefixes = "|".join(sorted({f.prefix for f in FAMILIES.values()}))
    rules += [(rf"^(?:{prefixes})/encoder/{LAYER}/{pattern}$", group)
              for pattern, group in layer_rules()]
    rules += [(rf"^(?:{prefixes})/{pattern}$", group) for pattern, group in SELECTION_RULES]
    return tuple(rules) + HEAD_RULES


def layer_group(path: Sequence[str]) -> str:
    """The group of a parameter at ``path`` inside one encoder layer (e.g.
    ``("output", "slot", "switch", "logits")``); ValueError where no rule or several match."""
    return _match("/".join(path), tuple((rf"^{p}$", g) for p, g in layer_rules()))


def _match(name: str, rules) -> str:
    hits = [group for pattern, group in rules if re.match(pattern, name)]
    if len(hits) != 1:
        raise ValueError(f"parameter {name} matches {len(hits)} rules of the parameter "
                         f"roles ({', '.join(hits) or 'none'}); give it exactly one role")
    return hits[0]


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


def param_role(path: Sequence[str] | str, rules=None) -> Role:
    """The role of the parameter at ``path`` (a tuple of names or a "/"-joined string).

    Raises ValueError naming the parameter when it matches no rule or several: a new
    kind of parameter must be given a role on purpose.
    """
    name = path if isinstance(path, str) else "/".join(path)
    group = _match(name, rules or param_rules())
    parts = name.split("/")
    if len(parts) > 2 and parts[1] == "encoder" and (span := layer_span(parts[2])):
        return Role(group, *span)
    return Role(group)


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

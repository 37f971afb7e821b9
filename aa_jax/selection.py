"""Selection: where every method's per-layer gates come from.

An adapter in a layer runs with a *gate* (see :mod:`aa_jax.adapters.kind`): None where it
always runs, or the weights <float32>[batch, 2] of (identity, adapter) where the
architecture switches it (``LayerSpec.switch``). All switched layers' gates come from one
module, :class:`Selection` (``<family>/encoder/selection``), which holds every switch's
logits together, <float32>[depth, 2] (the rows of unswitched layers are unused), so that a
selector may couple the layers. The encoder computes the gates once per call and scans
them in with the layers (:mod:`aa_jax.models.layers`). A selector is one entry of
:data:`SELECTORS`:

- ``gumbel`` (the paper's): each layer's own Gumbel-softmax switch. Training: a relaxed
  one-hot per example, ``softmax((logits_i + g) / tau)`` (straight-through one-hot with
  ``hard_switch``); inference: the one-hot of ``argmax(logits_i)``, an exact tie going to
  the identity. A layer is selected when its switch picks the adapter.
- ``topk``: the ``top_k`` switched layers with the highest ``logits[adapter] -
  logits[identity]`` keep their adapter. Training: per example, the top k of the
  Gumbel-perturbed scores (the Gumbel-top-k trick) in the forward pass, with the
  gradient of each layer's relaxed switch ``softmax((logits_i + g) / tau)`` (straight
  through); inference: the top k of the scores, ties going to the lower layer.

AdapterDrop's per-step draw (:func:`draw_adapter_drop`) and its per-layer flags
(:func:`layers_off`), which remove adapters for one call, are here too; fixed layers (no
switch) get no gate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aa_jax.errors import UserError
from aa_jax.switch import ADAPTER, IDENTITY, is_selected, relaxed_one_hot, switch_probabilities

# The selection's parameters, relative to a family's prefix (see aa_jax.params).
SELECTION_RULES: tuple[tuple[str, str], ...] = ((r"encoder/selection/logits", "switch"),)


@dataclasses.dataclass(frozen=True)
class Selector:
    """How the switched layers' gates are drawn.

    Attributes:
      name: what ``Architecture.selector`` names.
      description: one line for the documentation and ``--help``.
      gates: ``(logits <float32>[depth, 2], switched <bool>[depth], architecture, noise,
        batch) -> <float32>[depth, batch, 2]``; ``noise`` is Gumbel(0, 1) <float32>[depth,
        batch, 2] in training and None at inference, where the gates are one-hot and the
        same for every example (the layers :func:`selected_layers` names).
      check: refuses, in one sentence, an architecture the selector cannot gate.
    """

    name: str
    description: str
    gates: Callable[..., jax.Array]
    check: Callable[[Any], None] = lambda architecture: None


def _one_hot(adapter: jax.Array) -> jax.Array:
    """<bool or float>[...] (whether the adapter runs) -> <float32>[..., 2]."""
    adapter = adapter.astype(jnp.float32)
    return jnp.stack([1.0 - adapter, adapter], axis=-1)


def _gumbel_gates(logits, switched, architecture, noise, batch):
    if noise is None:  # inference: each switch's argmax, ties to the identity
        choice = is_selected(logits)
        return jnp.broadcast_to(_one_hot(choice)[:, None, :], (logits.shape[0], batch, 2))
    return relaxed_one_hot(logits[:, None, :], noise, architecture.temperature,
                           architecture.hard_switch)


def _top_k_mask(scores: jax.Array, switched: jax.Array, k: int) -> jax.Array:
    """<bool>[..., depth]: the ``k`` switched layers with the highest ``scores`` along the
    last axis (``lax.top_k``: ties to the lower index)."""
    scores = jnp.where(switched, scores, -jnp.inf)
    _, index = jax.lax.top_k(scores, k)
    return jax.nn.one_hot(index, scores.shape[-1], dtype=jnp.int32).sum(-2) > 0


def _topk_gates(logits, switched, architecture, noise, batch):
    k = architecture.top_k
    if noise is None:
        keep = _top_k_mask(logits[:, ADAPTER] - logits[:, IDENTITY], switched, k)
        return jnp.broadcast_to(_one_hot(keep)[:, None, :], (logits.shape[0], batch, 2))
    perturbed = logits[:, None, :] + noise                      # [depth, batch, 2]
    scores = (perturbed[..., ADAPTER] - perturbed[..., IDENTITY]).T  # [batch, depth]
    hard = _one_hot(_top_k_mask(scores, switched, k).T)         # [depth, batch, 2]
    soft = relaxed_one_hot(logits[:, None, :], noise, architecture.temperature)
    # Straight through: the forward value is exactly the top-k mask, the gradient that
    # of the relaxed switches.
    return hard + (soft - jax.lax.stop_gradient(soft))


def _topk_check(architecture) -> None:
    k, n = architecture.top_k, len(architecture.switched_layers)
    if n and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n):
        raise UserError(f"The top-k selector needs top_k (--top-k) between 1 and the "
                        f"{n} switched layers, got {k!r}.")


SELECTORS: dict[str, Selector] = {s.name: s for s in (
    Selector("gumbel", "a Gumbel-softmax switch per layer (the paper's)", _gumbel_gates),
    Selector("topk", "the top_k layers with the highest switch logits, straight-through",
             _topk_gates, _topk_check),
)}


def selected_layers(logits: np.ndarray, architecture) -> list[int]:
    """The layers whose adapter runs at inference: the unswitched adapter layers and the
    switched layers the selector keeps, given the selection's ``logits`` [depth, 2]. Read
    off the selector's own inference gates (float32, as the forward pass computes them),
    so that the layers named are exactly those that run."""
    switched = jnp.asarray([spec.switch for spec in architecture.layers])
    gates = SELECTORS[architecture.selector].gates(
        jnp.asarray(logits, jnp.float32), switched, architecture, None, 1)
    keep = np.asarray(gates[:, 0, ADAPTER]) == 1.0
    return [i for i, spec in enumerate(architecture.layers)
            if spec.adapter and (not spec.switch or keep[i])]


class Selection(nn.Module):
    """Every switched layer's gate, from the switches' logits <float32>[depth, 2] (zeros
    at init: adapter and identity equally likely).

    Call with the batch size, ``deterministic`` and, in training, the layers' Gumbel keys
    <key>[depth] (default: drawn from the ``gumbel`` rng stream and folded with each
    layer's index). Returns <float32>[depth, batch, 2], or None where no layer is
    switched. Sows softmax(logits) as ``intermediates/switch_probs`` ([depth, 2]).
    """

    architecture: Any

    @nn.compact
    def __call__(self, batch_size: int, deterministic: bool = True, keys=None):
        arch = self.architecture
        if not arch.switched_layers:
            return None
        logits = self.param("logits", nn.initializers.zeros_init(), (arch.depth, 2),
                            jnp.float32)
        self.sow("intermediates", "switch_probs", switch_probabilities(logits))
        switched = jnp.asarray([spec.switch for spec in arch.layers])
        noise = None
        if not deterministic:
            if keys is None:
                keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
                    self.make_rng("gumbel"), jnp.arange(arch.depth, dtype=jnp.uint32))
            noise = jax.vmap(lambda k: jax.random.gumbel(k, (batch_size, 2), jnp.float32))(
                keys)
        return SELECTORS[arch.selector].gates(logits, switched, arch, noise, batch_size)


def draw_adapter_drop(key: jax.Array, n_max: int) -> jax.Array | None:
    """AdapterDrop's per-step draw: n ~ U{0..n_max}, the number of first layers whose
    adapters this step drops (<int32>[]); None where ``n_max`` is 0."""
    return jax.random.randint(key, (), 0, n_max + 1) if n_max > 0 else None


def layers_off(adapter_drop, first: int, last: int):
    """Whether each of the layers ``first..last`` runs without its adapter: None where
    ``adapter_drop`` is None; a tuple of Python bools where it is a Python int (static:
    a dropped adapter is not computed); else a traced <bool>[last - first + 1]."""
    if adapter_drop is None:
        return None
    if isinstance(adapter_drop, int) and not isinstance(adapter_drop, bool):
        return tuple(i < adapter_drop for i in range(first, last + 1))
    return jnp.arange(first, last + 1) < adapter_drop


def selection_logits(params: dict) -> np.ndarray | None:
    """The switches' logits <float64>[depth, 2] of a parameter tree (full or trainable, any
    family), or None where it has none."""
    from flax.traverse_util import flatten_dict

    for path, value in flatten_dict(params).items():
        if path[-3:] == ("encoder", "selection", "logits"):
            return np.asarray(value, np.float64)
    return None


# -- checkpoints of aa_jax 0.3, whose switches lived in their layers ----------------------
# There each switched layer held its own logits <float32>[2] at ``.../switch/logits``
# (``output/slot/switch`` for seq_bn, ``attention/self/lora/switch`` for LoRA); they are
# the rows of the selection's logits now.

def is_v1_switch(path: tuple[str, ...]) -> bool:
    return path[-2:] == ("switch", "logits") and "encoder" in path


def v1_switch_layout(like: dict, v1_paths: list[tuple[str, ...]]) -> dict:
    """``like`` (per-layer params) as aa_jax 0.3 stored them: no selection, and a
    <float32>[2] at each of ``v1_paths`` (found in the stored checkpoint)."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = {k: v for k, v in flatten_dict(like).items()
            if k[-3:] != ("encoder", "selection", "logits")}
    flat.update({path: np.zeros(2, np.float32) for path in v1_paths})
    return unflatten_dict(flat)


def from_v1_switch_layout(tree: dict, like: dict) -> dict:
    """``tree`` restored in aa_jax 0.3's layout, with its per-layer switch logits gathered
    into the selection's rows (the rows of layers without a switch stay zero), shaped as
    ``like``."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = dict(flatten_dict(tree))
    out = {k: v for k, v in flat.items() if not is_v1_switch(k)}
    for path, value in flatten_dict(like).items():
        if path[-3:] != ("encoder", "selection", "logits"):
            continue
        rows = np.zeros(value.shape, np.float32)
        prefix = path[:-2]
        for old, logits in flat.items():
            if is_v1_switch(old) and old[:len(prefix)] == prefix:
                rows[int(old[len(prefix)].removeprefix("layer_"))] = np.asarray(logits)
        out[path] = jnp.asarray(rows)
    return unflatten_dict(out)

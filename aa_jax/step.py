"""The jitted core of training: the optimizer, the train step, prediction, evaluation.

:func:`make_train_step` is one jitted, pure ``(state, frozen, batch, rng) -> (state,
metrics)`` with the state donated. The state holds only what trains (adapters, switches,
rationals, classifier) and its optimizer state; the frozen backbone is a separate argument
that is never donated, so a run holds it once. Which parameters train, and with which
learning rate, comes from their roles (:mod:`aa_jax.params`) and the method's learning
rate groups (:class:`aa_jax.methods.Method`). Randomness is explicit: the step folds its
own step number into the run's training key before splitting it into the ``dropout`` and
``gumbel`` streams (and AdapterDrop's draw).

A batch is a dict of host arrays: ``input_ids``, ``attention_mask`` and the tokenizer's
other per-token outputs (<int32>[batch, length]; the model takes those its family names,
:func:`aa_jax.models.head.model_inputs`), ``labels`` (<int32>[batch], or <float32>[batch] for
regression) and, optionally, ``weights`` (<float32>[batch]: 1 for a real example, 0 for
the padding that fills the last batch; all ones where absent), as
:func:`aa_jax.data.pipeline.batches` and :func:`aa_jax.api.make_batch` make them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aa_jax.data import pipeline
from aa_jax.data.metrics import compute_metrics
from aa_jax.diagnostics import has_rationals, step_measurements
from aa_jax.distributed import multi_process
from aa_jax.errors import UserError
from aa_jax.methods import LEARNING_RATES
from aa_jax.selection import draw_adapter_drop
from aa_jax.models.head import model_inputs
from aa_jax.params import merge, param_groups


@flax.struct.dataclass
class TrainState:
    """What the step reads and writes: only what trains (the backbone is passed apart)."""

    step: jax.Array
    trainable: Any
    opt_state: Any



def warmup_steps(total_steps: int, warmup: float) -> int:
    """The steps of a run's warm-up: ``warmup`` (a fraction) of ``total_steps``, rounded
    to the nearest step and at least one; 0 without warm-up."""
    return max(1, round(warmup * total_steps)) if warmup else 0


def learning_rate_schedule(lr: float, total_steps: int, warmup: float = 0.0):
    """The learning rate of each step (0-based), as an optax schedule: ``lr`` decaying
    linearly to 0 over ``total_steps`` (the released Trainer's schedule); with
    ``warmup`` > 0 it first rises linearly from 0 over :func:`warmup_steps` steps, then
    decays from ``lr`` to 0 over the rest.

    >>> schedule = learning_rate_schedule(1.0, 8, warmup=0.25)
    >>> tuple(float(schedule(s)) for s in (0, 1, 2, 5, 8))
    (0.0, 0.5, 1.0, 0.5, 0.0)
    """
    if not warmup:
        return optax.linear_schedule(lr, 0.0, max(total_steps, 1))
    rise = warmup_steps(total_steps, warmup)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, rise),
         optax.linear_schedule(lr, 0.0, max(total_steps - rise, 1))], [rise])


def make_optimizer(config, total_steps: int, trainable: dict,
                   learning_rates: Mapping[str, str] = LEARNING_RATES, **rates):
    """Global-norm clipping, then Adam with one learning rate per group, each decaying
    linearly to 0 over the run (the released Trainer's schedule; ``config.warmup`` adds
    a linear warm-up, see :func:`learning_rate_schedule`), for the ``trainable`` tree (any
    layout; it decides each leaf's group, see :mod:`aa_jax.params`).

    ``config``: a :class:`~aa_jax.config.TrainConfig`, or None for its defaults (the
    released protocol's rates); ``rates`` override its fields by name, e.g.
    ``make_optimizer(None, 100, trainable, learning_rate=3e-3, switch_learning_rate=0.15)``.
    ``learning_rates`` names, per trainable group, the config field that holds its rate
    (the method's :attr:`~aa_jax.methods.Method.learning_rates`)."""
    import dataclasses

    from aa_jax.config import TrainConfig

    config = dataclasses.replace(config or TrainConfig(), **rates)
    config.validate()
    def adam(lr):
        return optax.adam(learning_rate_schedule(lr, total_steps, config.warmup))

    labels = unflatten_dict(param_groups(trainable))
    if "frozen" in set(flatten_dict(labels).values()):
        raise ValueError("make_optimizer got frozen parameters; pass the trainable subtree")
    tx = optax.multi_transform(
        {group: adam(float(getattr(config, field)))
         for group, field in learning_rates.items()}, labels)
    if config.max_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(float(config.max_grad_norm)), tx)
    return tx


@jax.jit
def copy_tree(tree):
    """A copy of every array of ``tree``, as one program (``jnp.copy`` leaf by leaf would
    compile a program for each shape)."""
    return jax.tree.map(jnp.copy, tree)


def init_state(trainable: dict, tx) -> TrainState:
    """A fresh state that owns its arrays: the step donates the state, so arrays shared
    with the caller are copied in."""
    trainable = copy_tree(trainable)
    return TrainState(step=jnp.int32(0), trainable=trainable, opt_state=tx.init(trainable))


# -- the step ---------------------------------------------------------------------------

def loss_fn(logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Mean loss over real examples (weights 0 mark batch padding)."""
    w = batch.get("weights")
    if w is None:
        w = jnp.ones(batch["labels"].shape[0], jnp.float32)
    if regression:
        per_example = jnp.square(logits[:, 0] - batch["labels"])
    else:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)


# -- data parallel ----------------------------------------------------------------------

def data_mesh(devices=None) -> Mesh | None:
    """A one-axis mesh ("data") over ``devices`` (default: all of them, across hosts), or
    None for a single device, where no sharding is needed."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None


def replicate(tree, mesh: Mesh | None):
    """``tree`` copied onto every device of ``mesh`` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    if multi_process():  # from host memory, which holds the same values in every process
        tree = jax.tree.map(np.asarray, tree)
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(batch: dict, mesh: Mesh | None) -> dict:
    """A host batch as one array over the mesh. Every process holds the whole batch and
    gives each of its devices that device's rows (needed only across processes: within
    one, jit shards a host batch itself)."""
    if mesh is None or not multi_process():
        return batch
    rows = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_callback(np.shape(v), rows,
                                            lambda index, v=v: np.asarray(v)[index])
            for k, v in batch.items()}


def _across_processes(fn: Callable, mesh: Mesh | None, batch_arg: int) -> Callable:
    """``fn`` taking host batches in a multi-process run (itself otherwise)."""
    if mesh is None or not multi_process():
        return fn

    def call(*args):
        args = list(args)
        args[batch_arg] = global_batch(args[batch_arg], mesh)
        return fn(*args)

    return call


def _shardings(mesh: Mesh | None, batch_arg: int, num_args: int) -> dict[str, Any]:
    """jit keywords that shard argument ``batch_arg`` (a batch) over the mesh's data axis
    and replicate the other arguments and the outputs."""
    if mesh is None:
        return {}
    replicated, by_example = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return {"in_shardings": tuple(by_example if i == batch_arg else replicated
                                  for i in range(num_args)),
            "out_shardings": replicated}


def check_batch_size(batch_size: int, mesh: Mesh | None) -> None:
    if mesh is not None and batch_size % mesh.size:
        raise UserError(f"--batch-size {batch_size} cannot be split over {mesh.size} "
                        f"devices; use a multiple of {mesh.size}.")


def _step_function(model, tx, regression: bool, adapterdrop_max: int) -> Callable:
    """The unjitted ``(state, frozen, batch, rng) -> (state, metrics)`` of one run."""
    # A model with rationals is applied with its intermediates mutable, so that each
    # rational sows the range of its input (aa_jax.diagnostics).
    observe = has_rationals(getattr(model, "architecture", None))

    def step(state: TrainState, frozen: dict, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        dropout_key, gumbel_key, drop_key = jax.random.split(rng, 3)
        drop = draw_adapter_drop(drop_key, adapterdrop_max)

        def compute_loss(trainable):
            out = model.apply(
                {"params": merge(trainable, frozen)}, **model_inputs(model, batch),
                deterministic=False, adapter_drop=drop,
                rngs={"dropout": dropout_key, "gumbel": gumbel_key},
                mutable=["intermediates"] if observe else False)
            (logits, _), variables = out if observe else (out, {})
            return loss_fn(logits, batch, regression), variables.get("intermediates", {})

        (loss, intermediates), grads = jax.value_and_grad(compute_loss, has_aux=True)(
            state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        new_state = state.replace(step=state.step + 1, trainable=trainable,
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                           **step_measurements(grads, intermediates)}

    return step


def make_train_step(model, tx, regression: bool | None = None, adapterdrop_max: int = 0,
                    mesh: Mesh | None = None) -> Callable:
    """The jitted ``(state, frozen, batch, rng) -> (state, metrics)``.

    ``batch`` holds the model's inputs (``input_ids``, ``attention_mask`` and what else its
    family takes, see ``model.inputs``), ``labels`` and optionally ``weights`` (see the
    module docstring; :func:`aa_jax.api.make_batch` makes one from texts). ``regression``:
    a one-output model trained with the squared error; default: whether the model has one
    output.

    With a ``mesh`` (see :func:`data_mesh`) the step is data parallel: every batch array
    is split over the mesh's ``data`` axis, the state and the backbone are replicated, and
    XLA sums the gradients across devices. The random draws (dropout, Gumbel noise) do not
    depend on the sharding, so the update is the single-device one up to the order of
    float additions.

    ``state`` is donated; ``frozen`` (the backbone) is only read. ``rng`` is the run's
    training key; the step folds ``state.step`` into it, so the same state and key always
    give the same update (and an interrupted run resumes exactly). With
    ``adapterdrop_max > 0`` each step drops the adapters of the first
    ``n ~ U{0..adapterdrop_max}`` layers (AdapterDrop). ``metrics["grad_norm"]`` is the
    global norm before clipping; ``metrics["grad_norms"]`` that of each trainable group,
    and ``metrics["input_ranges"]`` (a model with rationals) the range of each layer's
    rational input (:func:`aa_jax.diagnostics.step_measurements`).
    """
    if regression is None:
        regression = model.num_labels == 1
    step = _step_function(model, tx, regression, adapterdrop_max)
    return _across_processes(jax.jit(step, donate_argnums=0, **_shardings(mesh, 2, 4)), mesh,
                             2)


def make_seeds_train_step(model, tx, regression: bool, adapterdrop_max: int = 0,
                          frozen_axes: Any = None) -> Callable:
    """Several runs of one model as one program: the jitted
    ``(states, frozen, batches, rngs) -> (states, metrics)`` with a leading seed axis.

    ``states`` is :func:`stack_runs` of one :class:`TrainState` per seed (each with its own
    adapters, switches and optimizer state), ``batches`` stacks one batch per seed (each
    seed its own data; all of one shape), and ``rngs`` one training key per seed, so each
    seed draws its own dropout and Gumbel noise. ``frozen`` is the one backbone all seeds
    share. Each seed computes exactly what :func:`make_train_step` computes for it alone,
    up to the rounding of batched kernels.

    ``frozen_axes`` (a ``vmap`` axes prefix of ``frozen``: ``None`` shared, ``0`` one
    stacked copy per seed) is for frozen parameters the seeds do not share, such as a
    pooler the checkpoint lacks, which each seed initialises from its own key.
    """
    step = _step_function(model, tx, regression, adapterdrop_max)
    return jax.jit(jax.vmap(step, in_axes=(0, frozen_axes, 0, 0)), donate_argnums=0)


def stack_runs(trees: list) -> Any:
    """One pytree with a leading axis from several of the same structure (states, batches,
    keys)."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def unstack_run(tree, index: int) -> Any:
    """Seed ``index`` of a :func:`stack_runs` tree."""
    return jax.tree.map(lambda x: x[index], tree)



def make_predict(model, regression: bool, drop_first: int = 0,
                 mesh: Mesh | None = None) -> Callable:
    """Jitted ``(trainable, frozen, batch) -> predictions`` (scores or class ids).

    ``drop_first`` (AdapterDrop at evaluation) is static: the first ``drop_first`` layers'
    adapters are not computed at all. ``mesh`` splits the batch as in
    :func:`make_train_step`.
    """
    def predict(trainable, frozen, batch):
        logits, _ = model.apply(
            {"params": merge(trainable, frozen)}, **model_inputs(model, batch),
            deterministic=True, adapter_drop=int(drop_first) if drop_first else None)
        return logits[:, 0] if regression else jnp.argmax(logits, axis=-1)

    return _across_processes(jax.jit(predict, **_shardings(mesh, 2, 3)), mesh, 2)


def evaluate(predict, trainable, frozen, encoded, labels, task, batch_size) -> dict:
    """``task``'s metrics of ``predict`` over one encoded split.

    The split is batched from its shortest example to its longest
    (:func:`aa_jax.data.pipeline.length_order`), so that most batches pad to a short
    bucket, and the predictions are put back in dataset order before scoring.
    """
    if len(encoded) == 0:
        raise ValueError("no examples to score (the split is empty)")
    order = pipeline.length_order(encoded)
    preds = [np.asarray(predict(trainable, frozen, batch))[batch["weights"] != 0]
             for batch in pipeline.batches(encoded, labels, batch_size, order=order)]
    return compute_metrics(task, pipeline.in_dataset_order(order, np.concatenate(preds)),
                           pipeline.batch_labels(labels))

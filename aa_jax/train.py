"""Training and evaluation of adapters in a frozen BERT, following the paper's protocol.

The core is :func:`make_train_step`: one jitted, pure ``(state, frozen, batch, rng) ->
(state, metrics)`` with the state donated. The state holds only what trains (adapters,
switches, rationals, classifier) and its optimizer state; the frozen backbone is a
separate argument that is never donated, so a run holds it once. Which parameters train,
and with which learning rate, comes from one table of path rules (``PARAM_RULES``) that
must cover every parameter exactly once. Randomness is explicit: the seed is split once into an
init key and a training key, and the step folds its own step number into the training key
before splitting it into the ``dropout`` and ``gumbel`` streams (and AdapterDrop's draw).

:func:`train` runs a whole experiment into a run directory: data, model, epochs, dev
evaluation after each epoch, best-epoch selection, test evaluation, checkpoints every
epoch (resumable), ``metrics.jsonl``, ``architecture.json`` and ``result.json``. The
pieces of its loop (:func:`resume`, :func:`end_epoch`, :func:`finish_run`) also serve
:mod:`aa_jax.seeds`, which trains several seeds as one program into the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aa_jax import checkpoint
from aa_jax.adapters import Architecture, adapter_weight_count
from aa_jax.data import glue, pipeline
from aa_jax.data.metrics import compute_metrics, majority_class_scores
from aa_jax.distributed import is_primary, multi_process
from aa_jax.errors import UserError, check_record
from aa_jax import methods
from aa_jax.methods import METHODS, architecture_for, learned_architecture
from aa_jax.models.bert import POOLINGS, BertForSequenceClassification
from aa_jax.models.loader import declared_pooling, load_pretrained
from aa_jax.switch import ADAPTER

CONFIG_SCHEMA = "aa_jax.train_config/v1"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Every parameter's role, by its path ("bert/encoder/layer_3/output/slot/adapter/down/
# kernel"). Each path must match exactly one rule (big_vision's _split_frozen habit): a
# parameter the table does not know, or knows twice, is an error, never silently frozen
# or trained. "adapter" and "head" train with --lr, "switch" with --switch-lr, "rational"
# with --rational-lr.
PARAM_RULES: tuple[tuple[str, str], ...] = (
    (r"^bert/embeddings/(word|position|token_type)_embeddings/embedding$", "frozen"),
    (r"^bert/embeddings/LayerNorm/(scale|bias)$", "frozen"),
    (r"^bert/encoder/layer_\d+/attention/self/(query|key|value)/(kernel|bias)$", "frozen"),
    (r"^bert/encoder/layer_\d+/attention/output/dense/(kernel|bias)$", "frozen"),
    (r"^bert/encoder/layer_\d+/(attention/output|output)/LayerNorm/(scale|bias)$", "frozen"),
    (r"^bert/encoder/layer_\d+/(intermediate|output)/dense/(kernel|bias)$", "frozen"),
    (r"^bert/pooler/dense/(kernel|bias)$", "frozen"),
    (r"^bert/encoder/layer_\d+/output/slot/adapter/(down|up)/(kernel|bias)$", "adapter"),
    (r"^bert/encoder/layer_\d+/output/slot/adapter/rational/(numerator|denominator)$",
     "rational"),
    (r"^bert/encoder/layer_\d+/output/slot/switch/logits$", "switch"),
    (r"^classifier/(kernel|bias)$", "head"),
)
GROUP_LEARNING_RATE = {"adapter": "learning_rate", "head": "learning_rate",
                       "switch": "switch_learning_rate", "rational": "rational_learning_rate"}
# Learning rates (adapters and head, switches, rationals) of the two protocols: the
# released one, and the one chosen on the baseline's dev scores for MiniLM on a CPU (the
# released ratios kept; see the README's "The CPU protocol").
PROTOCOLS = {"released": {"learning_rate": 1e-4, "switch_learning_rate": 0.05,
                          "rational_learning_rate": 0.01},
             "cpu": {"learning_rate": 3e-3, "switch_learning_rate": 1.5,
                     "rational_learning_rate": 0.3}}
# Settings that say where things are, not what is computed: a run moved to another
# machine or folder is the same run (see run_identity).
LOCATION_FIELDS = ("glue_dir", "architecture", "data", "checkpoints_to_keep")


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a run; saved as ``config.json`` beside its results."""

    task: str = "rte"
    method: str = "aa"
    model: str = "minilm"
    train_size: int | None = 100
    seed: int = 42
    epochs: int = 20
    batch_size: int = 32
    max_length: int = 128
    learning_rate: float = 1e-4
    switch_learning_rate: float = 0.05
    rational_learning_rate: float = 0.01
    glue_dir: str | None = None
    # aa_focused: a run directory or architecture.json whose selected layers to use.
    architecture: str | None = None
    # last_n: how many of the last layers get an adapter, and which activation.
    last_n: int | None = None
    activation: str = "rational"
    rational_version: str = "A"
    hard_switch: bool = False
    # Global gradient-norm clipping (the released Trainer's 1.0); None or 0 turns it off.
    max_grad_norm: float | None = 1.0
    # adapterdrop: drop the first n ~ U{0..max} layers' adapters per training step
    # (None: 10 of 24 layers scaled to the depth; the released code draws from 0..10
    # whatever the depth, which is adapterdrop_max=10), and the first `drop_first`
    # layers' adapters at evaluation.
    adapterdrop_max: int | None = None
    drop_first: int = 0
    # A user dataset instead of GLUE: [train_file, test_file] and its columns.
    data: list[str] | None = None
    text_columns: list[str] | None = None
    label_column: str = "label"
    checkpoints_to_keep: int = 2
    # The head's input: "auto" (the pooling a sentence-transformers checkpoint declares,
    # else BERT's pooled [CLS]), "pooler" (the paper's head), "mean", "cls" or "max".
    pooling: str = "auto"
    # The frozen backbone's compute dtype: "float32", or "bfloat16" (params stay float32;
    # LayerNorm statistics, softmax, rationals, switches, the head and the loss stay
    # float32).
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CONFIG_SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k != "resolved"}  # written by train(), not a setting
            if d.get("adapter_skip") is False:  # aa_jax 0.1's default; the variant is gone
                d.pop("adapter_skip")
        d = check_record(d, CONFIG_SCHEMA, [f.name for f in dataclasses.fields(cls)],
                         "run config")
        config = cls(**d)
        config.validate()
        return config

    def validate(self) -> None:
        """Type and range checks that need no files; each failure is one sentence."""
        def need(ok: bool, message: str):
            if not ok:
                raise UserError(message)

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):  # a finite float; an int too large for a float is not one
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return False
            try:
                return math.isfinite(float(v))
            except OverflowError:
                return False

        def is_str_list(v):
            return isinstance(v, list) and all(isinstance(x, str) for x in v)

        need(isinstance(self.task, str) and bool(self.task), "--task must be a task name.")
        need(self.method in METHODS,
             f"Unknown method {self.method!r}; choose one of: {', '.join(METHODS)}.")
        need(isinstance(self.model, str) and bool(self.model),
             "--model must be a preset, a folder or a hub id.")
        need(self.train_size is None or is_int(self.train_size),
             "--train-size must be a whole number of examples (or omitted for the full set).")
        need(self.train_size is None or self.train_size >= glue.MIN_TRAIN_SIZE,
             f"--train-size {self.train_size} is too small to give both a training and a dev "
             f"set; use at least {glue.MIN_TRAIN_SIZE}.")
        need(is_int(self.seed) and self.seed >= 0, "--seed must be a non-negative integer.")
        need(is_int(self.epochs) and self.epochs >= 1, "--epochs must be a positive integer.")
        need(is_int(self.batch_size) and self.batch_size >= 1,
             "--batch-size must be a positive integer.")
        need(is_int(self.max_length) and self.max_length >= 8,
             "--max-length must be an integer of at least 8 tokens.")
        for name in ("learning_rate", "switch_learning_rate", "rational_learning_rate"):
            value = getattr(self, name)
            need(is_num(value) and value > 0,
                 f"--{name.replace('_', '-')} must be a positive finite number, got "
                 f"{_short(value)}.")
        need(self.max_grad_norm is None or (is_num(self.max_grad_norm) and
                                            self.max_grad_norm >= 0),
             f"max_grad_norm must be a non-negative number (0 or null: no clipping), got "
             f"{_short(self.max_grad_norm)}.")
        need(self.last_n is None or is_int(self.last_n),
             "--last-n must be a whole number of layers.")
        need(self.adapterdrop_max is None or (is_int(self.adapterdrop_max) and
                                              self.adapterdrop_max >= 0),
             "--adapterdrop-max must be a non-negative integer.")
        need(is_int(self.drop_first) and self.drop_first >= 0,
             "--drop-first must be a non-negative integer.")
        need(is_int(self.checkpoints_to_keep) and self.checkpoints_to_keep >= 1,
             "checkpoints_to_keep must be a positive integer.")
        need(self.data is None or is_str_list(self.data),
             "--data must be a comma-separated list of files.")
        need(self.text_columns is None or is_str_list(self.text_columns),
             "--text-columns must be a comma-separated list of column names.")
        need(self.data is None or bool(self.text_columns),
             "--data needs --text-columns naming one or two text columns.")
        need(isinstance(self.label_column, str) and bool(self.label_column),
             "--label-column must be a column name.")
        for name in ("glue_dir", "architecture"):
            need(getattr(self, name) is None or isinstance(getattr(self, name), str),
                 f"--{name.replace('_', '-')} must be a path.")
        need(self.pooling in POOLINGS,
             f"Unknown --pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}.")
        for name in ("activation", "rational_version"):
            need(isinstance(getattr(self, name), str),
                 f"--{name.replace('_', '-')} must be a name.")
        need(isinstance(self.hard_switch, bool), "hard_switch must be true or false.")
        need(isinstance(self.dtype, str) and self.dtype in DTYPES,
             f"Unknown --dtype {self.dtype!r}; choose one of: "
             f"{', '.join(DTYPES)}.")


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


@flax.struct.dataclass
class TrainState:
    """What the step reads and writes: only what trains (the backbone is passed apart)."""

    step: jax.Array
    trainable: Any
    opt_state: Any


# -- parameters -------------------------------------------------------------------------

def param_groups(params: dict) -> dict[tuple[str, ...], str]:
    """Each parameter's group from ``PARAM_RULES``: frozen, adapter, head, switch, rational.

    Raises ValueError naming the parameter when a path matches no rule or several: a new
    kind of parameter must be given a role on purpose.
    """
    groups = {}
    for path in flatten_dict(params):
        name = "/".join(path)
        hits = [group for pattern, group in PARAM_RULES if re.match(pattern, name)]
        if len(hits) != 1:
            raise ValueError(f"parameter {name} matches {len(hits)} rules of PARAM_RULES "
                             f"({', '.join(hits) or 'none'}); give it exactly one role")
        groups[path] = hits[0]
    return groups


def partition(params: dict) -> tuple[dict, dict]:
    """Splits params into (trainable, frozen) subtrees by ``PARAM_RULES``."""
    groups = param_groups(params)
    flat = flatten_dict(params)
    trainable = {k: v for k, v in flat.items() if groups[k] != "frozen"}
    frozen = {k: v for k, v in flat.items() if groups[k] == "frozen"}
    return unflatten_dict(trainable), unflatten_dict(frozen)


def merge(trainable: dict, frozen: dict) -> dict:
    return unflatten_dict({**flatten_dict(frozen), **flatten_dict(trainable)})


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def make_optimizer(config: TrainConfig, total_steps: int, trainable: dict):
    """Global-norm clipping, then Adam with one learning rate per group, each decaying
    linearly to 0 over the run (the released Trainer's schedule, no warmup)."""
    def adam(lr):
        return optax.adam(optax.linear_schedule(lr, 0.0, max(total_steps, 1)))

    labels = unflatten_dict(param_groups(trainable))
    if "frozen" in set(flatten_dict(labels).values()):
        raise ValueError("make_optimizer got frozen parameters; pass the trainable subtree")
    tx = optax.multi_transform(
        {group: adam(float(getattr(config, field)))
         for group, field in GROUP_LEARNING_RATE.items()}, labels)
    if config.max_grad_norm:
        tx = optax.chain(optax.clip_by_global_norm(float(config.max_grad_norm)), tx)
    return tx


def init_state(trainable: dict, tx) -> TrainState:
    """A fresh state that owns its arrays: the step donates the state, so arrays shared
    with the caller are copied in."""
    trainable = jax.tree.map(jnp.copy, trainable)
    return TrainState(step=jnp.int32(0), trainable=trainable, opt_state=tx.init(trainable))


# -- the step ---------------------------------------------------------------------------

def loss_fn(logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Mean loss over real examples (weights 0 mark batch padding)."""
    w = batch["weights"]
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
    def step(state: TrainState, frozen: dict, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        dropout_key, gumbel_key, drop_key = jax.random.split(rng, 3)
        drop = (jax.random.randint(drop_key, (), 0, adapterdrop_max + 1)
                if adapterdrop_max > 0 else None)

        def compute_loss(trainable):
            logits, _ = model.apply(
                {"params": merge(trainable, frozen)}, batch["input_ids"],
                batch["token_type_ids"], batch["attention_mask"], deterministic=False,
                adapter_drop=drop, rngs={"dropout": dropout_key, "gumbel": gumbel_key})
            return loss_fn(logits, batch, regression)

        loss, grads = jax.value_and_grad(compute_loss)(state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        new_state = state.replace(step=state.step + 1, trainable=trainable,
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def make_train_step(model, tx, regression: bool, adapterdrop_max: int = 0,
                    mesh: Mesh | None = None) -> Callable:
    """The jitted ``(state, frozen, batch, rng) -> (state, metrics)``.

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
    global norm before clipping.
    """
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
            {"params": merge(trainable, frozen)}, batch["input_ids"],
            batch["token_type_ids"], batch["attention_mask"], deterministic=True,
            adapter_drop=int(drop_first) if drop_first else None)
        return logits[:, 0] if regression else jnp.argmax(logits, axis=-1)

    return _across_processes(jax.jit(predict, **_shardings(mesh, 2, 3)), mesh, 2)


def evaluate(predict, trainable, frozen, encoded, labels, task, batch_size) -> dict:
    preds, gold, weights = [], [], []
    for batch in pipeline.batches(encoded, labels, batch_size):
        preds.append(np.asarray(predict(trainable, frozen, batch)))
        gold.append(batch["labels"])
        weights.append(batch["weights"])
    return compute_metrics(task, np.concatenate(preds), np.concatenate(gold),
                           np.concatenate(weights))


# -- setting a run up -------------------------------------------------------------------

@dataclasses.dataclass
class Experiment:
    """Everything a run needs, built and validated before anything is written."""

    config: TrainConfig
    task: glue.Task
    encoded: dict
    labels: dict
    model: BertForSequenceClassification
    architecture: Architecture
    trainable: dict
    frozen: dict
    pretrained: Any
    pooling: str

    @property
    def source(self) -> dict:
        c = self.config
        return {"model": c.model, "task": self.task.name, "train_size": c.train_size,
                "seed": c.seed, "method": c.method}


def build_architecture(config: TrainConfig, depth: int) -> Architecture:
    selected = (methods.selected_layers_from(config.architecture, depth)
                if config.method == "aa_focused" and config.architecture else None)
    return architecture_for(config.method, depth, selected_layers=selected,
                            last_n=config.last_n, activation=config.activation,
                            rational_version=config.rational_version,
                            hard_switch=config.hard_switch)


def load_data(config: TrainConfig):
    if config.data:
        return glue.load_custom(config.data, config.text_columns, config.label_column,
                                train_size=config.train_size, seed=config.seed)
    task = glue.get_task(config.task)
    return task, glue.make_splits(task, config.train_size, config.seed, config.glue_dir)


def resolve_pooling(pooling: str, pretrained) -> str:
    """``auto``: the pooling the checkpoint declares (sentence-transformers), else the
    paper's pooled [CLS] head; any other value is used as given."""
    if pooling != "auto":
        return pooling
    return declared_pooling(pretrained.path) or "pooler"


def init_params(model, key: jax.Array, backbone: dict) -> tuple[dict, dict]:
    """(trainable, frozen) params of ``model`` with the pretrained ``backbone`` frozen.

    Only what the backbone does not provide is initialised (adapters, switches,
    rationals, the head, and a pooler the checkpoint lacks): the jitted init returns just
    those leaves, so XLA never builds the random BERT that ``model.init`` describes.
    """
    dummy = jnp.zeros((1, 8), jnp.int32)
    shapes = flatten_dict(jax.eval_shape(lambda k: model.init(k, dummy), key)["params"])
    groups = param_groups(unflatten_dict(shapes))
    given = {("bert",) + k: v for k, v in flatten_dict(backbone).items()}
    for k, v in given.items():
        if k not in shapes or shapes[k].shape != v.shape:
            raise ValueError(f"backbone parameter {'/'.join(k)} {v.shape} does not fit the "
                             f"model {shapes[k].shape if k in shapes else '(absent)'}")
    needed = {"/".join(k) for k, g in groups.items() if g != "frozen" or k not in given}

    def init(k):
        flat = flatten_dict(model.init(k, dummy)["params"])
        return {"/".join(p): v for p, v in flat.items() if "/".join(p) in needed}

    made = {tuple(name.split("/")): v for name, v in jax.jit(init)(key).items()}
    trainable = {k: v for k, v in made.items() if groups[k] != "frozen"}
    frozen = {**given, **{k: v for k, v in made.items() if groups[k] == "frozen"}}
    return unflatten_dict(trainable), unflatten_dict(frozen)


def setup(config: TrainConfig, pretrained=None, architecture: Architecture | None = None,
          pooling: str | None = None) -> Experiment:
    """Loads data and model and builds the initial params; raises UserError on bad input.

    ``architecture`` and ``pooling`` replace what the config would build (an export's
    static architecture, and the pooling its run used).
    """
    config.validate()
    pretrained = pretrained or load_pretrained(config.model)
    c = pretrained.config
    if config.max_length > c.max_position_embeddings:
        raise UserError(f"--max-length {config.max_length} exceeds the model's "
                        f"{c.max_position_embeddings} position embeddings; use at most "
                        f"{c.max_position_embeddings}.")
    if architecture is None:
        architecture = build_architecture(config, c.num_hidden_layers)
    architecture.check_depth(c.num_hidden_layers)
    methods.adapterdrop_schedule(config.method, architecture.depth, config.adapterdrop_max,
                                 config.drop_first)  # validates drop_first against depth
    task, splits = load_data(config)
    encoded = {name: pipeline.encode(pretrained.tokenizer, ex.texts, config.max_length)
               for name, ex in splits.items()}
    labels = {name: ex.labels for name, ex in splits.items()}
    pooling = pooling or resolve_pooling(config.pooling, pretrained)
    model = BertForSequenceClassification(c, task.num_labels, architecture,
                                          dtype=DTYPES[config.dtype], pooling=pooling)
    init_key = run_keys(config.seed)[0]
    trainable, frozen = init_params(model, init_key, pretrained.params)
    return Experiment(config, task, encoded, labels, model, architecture, trainable, frozen,
                      pretrained, pooling)


# -- run identity -----------------------------------------------------------------------

def resolve_inputs(config: TrainConfig) -> dict[str, Any]:
    """What the location settings point at, as far as it changes results: the layers of
    an AA-focused run's architecture and the content of a user's data files."""
    resolved: dict[str, Any] = {}
    if config.method == "aa_focused" and config.architecture:
        resolved["selected_layers"] = sorted(
            methods.read_learned(config.architecture)["selected_layers"])
    if config.data:
        hashes = []
        for name in config.data:
            path = Path(name)
            if not path.is_file():
                raise UserError(f"Data file {path} does not exist; check the path.")
            hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
        resolved["data_sha256"] = hashes
    return resolved


def run_identity(config: TrainConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    """The settings that change a run's results: everything but where things are
    (``LOCATION_FIELDS``), plus what those locations resolved to."""
    identity = {k: v for k, v in config.to_dict().items() if k not in LOCATION_FIELDS}
    identity.update({k: resolved.get(k) for k in ("selected_layers", "data_sha256")})
    return identity


def _check_same_run(out: Path, config: TrainConfig, resolved: dict[str, Any]) -> None:
    """A run directory belongs to one run; reusing it for another is a mistake."""
    path = out / "config.json"
    if not path.is_file():
        return
    old = checkpoint.read_json(path, "run config")
    if not isinstance(old, dict):
        raise UserError(f"{path} is not a run config; use a new --out directory.")
    try:
        old_config = TrainConfig.from_dict(old)
    except UserError:
        raise UserError(f"{path} holds a run config this version cannot read; use a new "
                        f"--out directory.") from None
    old_resolved = old.get("resolved")
    if not isinstance(old_resolved, dict):
        old_resolved = {}
    want, got = run_identity(config, resolved), run_identity(old_config, old_resolved)
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise UserError(f"{out} holds a run with different settings ({', '.join(diff)}); "
                        f"use a new --out directory or the same settings to resume.")


# -- the whole run ----------------------------------------------------------------------

def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="epoch", disable=not enabled, leave=False)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, training key) of a run: the seed split once, up front."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle order (one integer from the run's seed and the epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def prepare_run_dir(out: Path) -> None:
    """Creates ``out`` (or says in one sentence why it cannot) and clears stale temp files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot create the run directory {out} ({e.strerror or e}); choose "
                        f"a writable --out.") from None
    checkpoint.remove_stale_temp_files(out)


@dataclasses.dataclass
class RunLog:
    """The loop's bookkeeping that every checkpoint carries.

    ``best`` is the best epoch so far (``epoch``, its dev ``score`` and metrics ``dev``,
    and a copy of its trainable ``params``); ``history`` one record per finished epoch;
    ``start_epoch`` the next epoch to train; ``elapsed`` the training seconds so far.
    """

    best: dict
    history: list
    start_epoch: int = 1
    elapsed: float = 0.0


def resume(mgr, state: TrainState) -> tuple[TrainState, RunLog]:
    """The state and bookkeeping of the latest checkpoint in ``mgr``, or ``state`` and a
    fresh log when there is none."""
    log = RunLog(best={"epoch": 0, "score": -math.inf, "dev": None,
                       "params": jax.tree.map(jnp.copy, state.trainable)}, history=[])
    if mgr.latest_step() is None:
        return state, log
    restored = checkpoint.restore(mgr, state.trainable, state.opt_state)
    meta = restored["meta"]
    state = state.replace(step=jnp.int32(meta["step"]), trainable=restored["params"],
                          opt_state=restored["opt_state"])
    log = RunLog(best={"epoch": meta["best_epoch"], "score": meta["best_score"],
                       "dev": meta["best_dev"], "params": restored["best_params"]},
                 history=meta["history"], start_epoch=meta["epoch"] + 1,
                 elapsed=meta["train_seconds"])
    return state, log


def write_config(out: Path, exp: Experiment, resolved: dict[str, Any]) -> None:
    """``config.json``: the run's settings and what its locations resolved to."""
    if not is_primary():
        return
    checkpoint.write_json_atomic(out / "config.json", {
        **exp.config.to_dict(), "resolved": {**resolved, "pooling": exp.pooling}})


def end_epoch(exp: Experiment, out: Path, mgr, predict, frozen, state: TrainState,
              epoch: int, losses: np.ndarray, log: RunLog,
              seconds: Callable[[], float]) -> dict:
    """An epoch's bookkeeping after its training steps: dev evaluation, best epoch,
    ``metrics.jsonl`` and the epoch's checkpoint. ``losses`` are the epoch's step losses,
    ``seconds()`` the run's training seconds so far. Returns the dev metrics."""
    task = exp.task
    dev = evaluate(predict, state.trainable, frozen, exp.encoded["dev"], exp.labels["dev"],
                   task, exp.config.batch_size)
    if dev[task.select_metric] > log.best["score"]:
        log.best = {"epoch": epoch, "score": dev[task.select_metric], "dev": dev,
                    "params": jax.tree.map(jnp.copy, state.trainable)}
    record = {"epoch": epoch, "step": int(state.step), "loss": float(losses.mean()),
              "dev": dev}
    learned = learned_architecture(state.trainable, exp.architecture, exp.source)
    if exp.architecture.switched_layers:
        record["switch_probs"] = {str(e["layer"]): e["switch_probs"][ADAPTER]
                                  for e in learned["layers"] if "switch_probs" in e}
    log.history.append(record)
    _write_history(out, log.history)
    best = log.best
    meta = {"epoch": epoch, "step": int(state.step), "best_epoch": best["epoch"],
            "best_score": best["score"], "best_dev": best["dev"], "history": log.history,
            "train_seconds": seconds()}
    checkpoint.save(mgr, epoch, state.trainable, state.opt_state, best["params"], learned,
                    meta)
    return dev


def device_name() -> str:
    """The backend and, where it says more, the kind of device: ``cpu``, ``gpu: NVIDIA
    H100 80GB HBM3``."""
    backend, kind = jax.default_backend(), jax.devices()[0].device_kind
    return backend if kind.lower() == backend else f"{backend}: {kind}"


def finish_run(exp: Experiment, out: Path, predict, frozen, best: dict, drop_first: int,
               train_seconds: float, extra: dict[str, Any] | None = None,
               setup_seconds: float = 0.0) -> dict:
    """Test evaluation of the best epoch; writes ``architecture.json`` and ``result.json``
    (with ``extra`` keys appended) and returns the result. ``setup_seconds``: the time
    before training began (data, model, optimizer, resuming), which the result adds to the
    test evaluation's as ``setup_and_test_seconds``."""
    task, c = exp.task, exp.config
    started = time.perf_counter()
    test = evaluate(predict, best["params"], frozen, exp.encoded["test"],
                    exp.labels["test"], task, c.batch_size)
    setup_and_test = setup_seconds + time.perf_counter() - started
    learned = learned_architecture(best["params"], exp.architecture, exp.source)
    weights, biases = adapter_weight_count(exp.pretrained.config.hidden_size,
                                           exp.architecture)
    result = {
        "task": task.name, "method": c.method, "model": c.model,
        "train_size": c.train_size, "seed": c.seed,
        "dev": best["dev"], "test": test, "best_epoch": best["epoch"],
        "select_metric": task.select_metric,
        # What predicting the test set's most frequent class scores: the chance level.
        "majority": majority_class_scores(task, exp.labels["test"]),
        "selected_layers": methods.layers_run(learned, drop_first),
        "pooling": exp.pooling,
        "trainable_params": count_params(best["params"]),
        "adapter_weights": weights, "adapter_biases": biases,
        "train_seconds": round(train_seconds, 2),
        # The rest of the run's wall time, as its last process spent it (what --plan adds).
        "setup_and_test_seconds": round(setup_and_test, 2),
        # Where it ran: a run's numbers differ in rounding from one device to another.
        "device": device_name(),
        "examples": {k: int(len(v)) for k, v in exp.labels.items()},
    }
    note = methods.result_note(c.method, exp.architecture)
    if note:
        result["note"] = note
    result.update(extra or {})
    if is_primary():
        checkpoint.write_json_atomic(out / "architecture.json", learned)
        checkpoint.write_json_atomic(out / "result.json", result)
    return result


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True,
          pretrained=None) -> dict:
    """Runs (or resumes, or returns the finished result of) one experiment in ``out_dir``."""
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the run.")
    config.validate()
    resolved = resolve_inputs(config)
    if checkpoint.is_complete(out):
        _check_same_run(out, config, resolved)
        return checkpoint.read_json(out / "result.json", "run result")
    exp = setup(config, pretrained)
    _check_same_run(out, config, resolved)
    mesh = data_mesh()
    check_batch_size(config.batch_size, mesh)
    prepare_run_dir(out)

    task, c = exp.task, config
    trainable, frozen = exp.trainable, replicate(exp.frozen, mesh)
    steps_per_epoch = pipeline.num_batches(len(exp.labels["train"]), c.batch_size)
    tx = make_optimizer(c, steps_per_epoch * c.epochs, trainable)
    state = replicate(init_state(trainable, tx), mesh)
    drop_max, drop_first = methods.adapterdrop_schedule(
        c.method, exp.architecture.depth, c.adapterdrop_max, c.drop_first)
    step_fn = make_train_step(exp.model, tx, task.is_regression, drop_max, mesh)
    predict = make_predict(exp.model, task.is_regression, drop_first, mesh)
    train_key = run_keys(c.seed)[1]

    mgr = checkpoint.manager(out / "checkpoints", c.checkpoints_to_keep)
    try:
        state, log = resume(mgr, state)
        state = replicate(state, mesh)
        log.best["params"] = replicate(log.best["params"], mesh)
        # Written only once the checkpoint (if any) is known to fit, so that a refused resume
        # leaves the directory as it was.
        write_config(out, exp, resolved)
        _write_history(out, log.history)

        select = task.select_metric
        bar = _progress(c.epochs, progress)
        bar.update(log.start_epoch - 1)
        setup_seconds = time.perf_counter() - started
        t0 = time.perf_counter() - log.elapsed
        for epoch in range(log.start_epoch, c.epochs + 1):
            losses, grad_norms = [], []
            for batch in pipeline.batches(exp.encoded["train"], exp.labels["train"],
                                          c.batch_size,
                                          shuffle_seed=shuffle_seed(c.seed, epoch)):
                state, metrics = step_fn(state, frozen, batch, train_key)
                losses.append(metrics["loss"])
                grad_norms.append(metrics["grad_norm"])
            losses = np.asarray(jax.device_get(losses), dtype=np.float64)
            _check_finite(losses, np.asarray(jax.device_get(grad_norms), dtype=np.float64),
                          state, epoch, mgr)
            dev = end_epoch(exp, out, mgr, predict, frozen, state, epoch, losses, log,
                            lambda: time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{losses.mean():.4f}", **{f"dev_{select}": f"{dev[select]:.4f}"})
        bar.close()
    finally:
        mgr.close()
    train_seconds = time.perf_counter() - t0
    return finish_run(exp, out, predict, frozen, log.best, drop_first, train_seconds,
                      setup_seconds=setup_seconds)


def _check_finite(losses: np.ndarray, grad_norms: np.ndarray, state: TrainState, epoch: int,
                  mgr) -> None:
    """Stops a diverged run before its epoch is evaluated or checkpointed.

    Checked once per epoch (a per-step check would stall the device every step): the
    first step whose loss or gradient is non-finite, or, if only the final update
    overflowed, the epoch's last step. The epoch's state is dropped, so the newest
    checkpoint on disk is the last good one.
    """
    finite = np.isfinite(losses) & np.isfinite(grad_norms)
    params_ok = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.trainable))
    if finite.all() and params_ok:
        return
    first = int(np.argmin(finite)) if not finite.all() else len(losses) - 1
    step = int(state.step) - len(losses) + first + 1
    last = mgr.latest_step()
    kept = (f"the checkpoint of epoch {last} in {mgr.directory} is the last good state"
            if last is not None else "no checkpoint had been written yet")
    raise UserError(f"Training diverged at step {step} (epoch {epoch}): the loss or its "
                    f"gradients became non-finite and {kept}; lower the learning rates "
                    f"(--lr, --switch-lr, --rational-lr) and train into a new --out "
                    f"directory.")


def _write_history(out: Path, history: list[dict]) -> None:
    if not is_primary():
        return
    checkpoint.write_text_atomic(out / "metrics.jsonl",
                                 "".join(json.dumps(r) + "\n" for r in history))


def load_run(run_dir: str | Path, pretrained=None) -> tuple[Experiment, dict, dict]:
    """Rebuilds a finished or interrupted run: (experiment, best trainable params, meta)."""
    run_dir = Path(run_dir)
    config = TrainConfig.from_dict(checkpoint.read_json(run_dir / "config.json", "run config"))
    exp = setup(config, pretrained)
    params, meta = checkpoint.restore_params(run_dir / "checkpoints", exp.trainable)
    return exp, params, meta


def evaluate_run(run_dir: str | Path, pretrained=None) -> dict:
    """Dev and test metrics of a run's best epoch, recomputed from its checkpoint, or of
    an export (:mod:`aa_jax.export`)."""
    from aa_jax.export import is_export, load_export

    if is_export(run_dir):
        exp, params = load_export(run_dir, pretrained)
    else:
        exp, params, _ = load_run(run_dir, pretrained)
    c = exp.config
    _, drop_first = methods.adapterdrop_schedule(c.method, exp.architecture.depth,
                                                 c.adapterdrop_max, c.drop_first)
    mesh = data_mesh()
    check_batch_size(c.batch_size, mesh)
    predict = make_predict(exp.model, exp.task.is_regression, drop_first, mesh)
    params, frozen = replicate(params, mesh), replicate(exp.frozen, mesh)
    return {split: evaluate(predict, params, frozen, exp.encoded[split],
                            exp.labels[split], exp.task, c.batch_size)
            for split in ("dev", "test")}

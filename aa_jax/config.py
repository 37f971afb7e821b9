"""A run's configuration: one dataclass, its validation, and the learning-rate protocols.

:class:`TrainConfig` is declared once: each field carries its help text (and, where it
is not ``--field-name``, its flag) in its metadata, and the ``aa-jax train`` flags are
generated from it (:mod:`aa_jax.cli`), so a new option is one field here. It is saved as
``config.json`` beside a run's results.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from aa_jax.adapters import ACTIVATIONS, KINDS
from aa_jax.data import glue
from aa_jax.data.metrics import METRICS
from aa_jax.errors import UserError, check_record
from aa_jax.methods import METHODS
from aa_jax.models.head import POOLINGS
from aa_jax.rational import INITS, VERSIONS
from aa_jax.settings import is_finite, is_int
from aa_jax.switch import check_temperature

CONFIG_SCHEMA = "aa_jax.train_config/v1"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Learning rates (adapters and head, switches, rationals) of the protocols: the released
# one; the CPU protocol for MiniLM, its adapter rate chosen on the baseline's dev scores
# and its switch rate by the switch-rate rule on switch dynamics (the rationals at 1/5 of
# it), as paper_v2 runs; and cpu-v1, its first version (the released ratios to the adapter
# rate, under which the switches commit within the first epoch), as the `paper` sweep
# ran. See docs/experiments.md, "The CPU protocol".
PROTOCOLS = {"released": {"learning_rate": 1e-4, "switch_learning_rate": 0.05,
                          "rational_learning_rate": 0.01},
             "cpu": {"learning_rate": 3e-3, "switch_learning_rate": 0.15,
                     "rational_learning_rate": 0.03},
             "cpu-v1": {"learning_rate": 3e-3, "switch_learning_rate": 1.5,
                        "rational_learning_rate": 0.3}}
# Settings that say where things are (or how often they are saved), not what is computed:
# a run moved to another machine or folder is the same run (see
# aa_jax.run_setup.run_identity).
MATMUL_PRECISIONS = ("default", "highest")
METRIC_CHOICES = tuple(METRICS)
LOCATION_FIELDS = ("glue_dir", "architecture", "data", "checkpoints_to_keep", "checkpoint_every",
                   "log_dir")


def _field(default, help: str, **meta):
    """A config field with its command-line help (and ``flag``, ``choices``, ``cli``:
    False for fields the command line does not set)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default),
                                 metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a run; saved as ``config.json`` beside its results."""

    task: str = _field("rte", "GLUE task (" + ", ".join(glue.GLUE_TASKS) + "); ignored with "
                       "--data")
    method: str = _field("aa", "what to train (see docs/methods.md)",
                         choices=tuple(METHODS))
    model: str = _field("minilm", "minilm (offline), bert-base, bert-large, a folder or a "
                        "hub id")
    train_size: int | None = _field(100, "examples sampled for train+dev (75/25), or 'full' "
                                    "(default: 100 for a GLUE task, all of --data)")
    seed: int = _field(42, "the run's seed (data sample, init, dropout, Gumbel noise)")
    epochs: int = _field(20, "training epochs")
    batch_size: int = _field(32, "examples per step")
    max_length: int = _field(128, "tokens per example (longer ones are cut)")
    learning_rate: float = _field(1e-4, "adapters and classifier (default: the protocol's)",
                                  flag="--lr")
    switch_learning_rate: float = _field(0.05, "switch logits (default: the protocol's)",
                                         flag="--switch-lr")
    rational_learning_rate: float = _field(0.01, "rational coefficients (default: the "
                                           "protocol's)", flag="--rational-lr")
    glue_dir: str | None = _field(None, "local GLUE Parquet folder (else $AA_JAX_GLUE_DIR, "
                                  "else the hub)")
    architecture: str | None = _field(None, "aa_focused: an AA run directory or its "
                                      "architecture.json")
    last_n: int | None = _field(None, "last_n: how many of the last layers get an adapter")
    layers: list[int] | None = _field(None, "given_layers: the layers that get an adapter, "
                                      "e.g. 0,3,5")
    activation: str = _field("rational", "last_n: the adapters' activation",
                             choices=ACTIVATIONS)
    adapter: str = _field("seq_bn", "adapter kind: " + "; ".join(
        f"{k.name}: {k.description}" for k in KINDS.values()), choices=tuple(KINDS))
    adapter_options: dict | None = _field(
        None, "the adapter kind's options, by name (the command line sets them with the "
        "kind's flags, e.g. --lora-rank); validate() fills in the kind's defaults", cli=False)
    top_k: int | None = _field(None, "aa_topk: how many layers keep their adapter (default: "
                               "as many as the AA run --architecture names selected)",
                               flag="--top-k")
    rational_version: str = _field("A", "the rational's denominator form (PAU versions)",
                                   choices=VERSIONS)
    rational_init: str = _field("one", "the rationals' starting function: one (f(x) = 1, "
                                "the paper's) or a least-squares fit of a named activation "
                                "on [-3, 3]", choices=INITS)
    temperature: float = _field(0.1, "the switches' Gumbel-softmax temperature tau")
    hard_switch: bool = _field(False, "straight-through switches (one-hot forward)")
    max_grad_norm: float | None = _field(1.0, "clip the global gradient norm (0: off); the "
                                         "released code used 1.0")
    warmup: float = _field(0.0, "fraction of the run's steps over which every learning rate "
                           "rises linearly from 0 before its linear decay to 0; 0: no "
                           "warm-up, as released")
    adapterdrop_max: int | None = _field(
        None, "adapterdrop: each step drops the first n ~ U{0..N} layers' adapters "
        "(default: 10 of 24 layers scaled to the depth; 10 is the released code)")
    drop_first: int = _field(0, "adapterdrop: drop the first k layers' adapters at "
                             "evaluation")
    data: list[str] | None = _field(None, "own dataset: TRAIN_FILE,TEST_FILE[,DEV_FILE] "
                                    "(csv, tsv, jsonl, json, parquet), or a dataset folder or "
                                    "Hub id that datasets.load_dataset reads")
    data_config: str | None = _field(None, "own dataset: the dataset's configuration name")
    split_train: str = _field("train", "own dataset: the split to train on")
    split_test: str = _field("test", "own dataset: the split to test on")
    split_dev: str | None = _field(None, "own dataset: a dev split to use as it is (default: "
                                   "a quarter of the training sample)")
    metric: str | None = _field(None, "the metric that selects the best epoch (reported "
                                "too; it must fit the task); default: the task's",
                                choices=METRIC_CHOICES)
    text_columns: list[str] | None = _field(None, "own dataset: one or two text columns")
    label_column: str = _field("label", "own dataset: the label column")
    checkpoints_to_keep: int = _field(2, "checkpoints kept in the run directory", cli=False)
    checkpoint_every: float = _field(60.0, "seconds (wall time) at least between two "
                                     "checkpoints, checked after each epoch (0: every epoch); "
                                     "the last epoch is always saved, and an interrupted run "
                                     "resumes from the latest")
    pooling: str = _field("auto", "head input: auto (the pooling a sentence-transformers "
                          "checkpoint declares, e.g. mean for minilm; else the paper's "
                          "pooled [CLS]), pooler, mean, cls (the [CLS] hidden state) or max",
                          choices=POOLINGS)
    dtype: str = _field("float32", "compute dtype of the frozen backbone (LayerNorm "
                        "statistics, softmax, rationals, switches, head and loss stay "
                        "float32)", choices=tuple(DTYPES))
    matmul_precision: str = _field("default", "float32 matmul precision: default (the "
                                   "device's own: float32 on CPU, TF32 on recent GPUs) or "
                                   "highest (float32 on every device)",
                                   choices=MATMUL_PRECISIONS)
    log_dir: str | None = _field(None, "also write TensorBoard event files (loss, learning "
                                 "rates, gradient norm per step; dev metrics, p(adapter) "
                                 "per epoch) to LOG_DIR/<run folder name>")

    def architecture_options(self) -> dict[str, Any]:
        """The :class:`~aa_jax.adapters.Architecture` settings this config chooses."""
        return {"rational_version": self.rational_version,
                "rational_init": self.rational_init, "hard_switch": self.hard_switch,
                "temperature": self.temperature, "adapter": self.adapter,
                "options": self.adapter_options, "top_k": self.top_k}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CONFIG_SCHEMA, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k != "resolved"}  # written by train(), not a setting
            if d.get("adapter_skip") is False:  # aa_jax 0.1's default; the variant is gone
                d.pop("adapter_skip")
            if "lora_rank" in d or "lora_alpha" in d:  # aa_jax 0.3: flat LoRA options
                rank, alpha = d.pop("lora_rank", 8), d.pop("lora_alpha", 16.0)
                if d.get("adapter") == "lora" and "adapter_options" not in d:
                    d["adapter_options"] = {"rank": rank, "alpha": alpha}
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

        is_num = is_finite  # a finite number; an int too large for a float is not one

        def is_str_list(v):
            return isinstance(v, list) and all(isinstance(x, str) for x in v)

        need(self.layers is None or (isinstance(self.layers, list) and
                                     all(is_int(x) for x in self.layers)),
             "--layers must be a comma-separated list of layer indices, e.g. 0,3,5.")

        need(isinstance(self.task, str) and bool(self.task), "--task must be a task name.")
        need(isinstance(self.method, str) and self.method in METHODS,
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
        need(is_num(self.warmup) and 0 <= self.warmup < 1,
             f"--warmup must be a fraction of the run's steps, at least 0 and below 1, got "
             f"{_short(self.warmup)}.")
        need(self.last_n is None or is_int(self.last_n),
             "--last-n must be a whole number of layers.")
        need(self.adapterdrop_max is None or (is_int(self.adapterdrop_max) and
                                              self.adapterdrop_max >= 0),
             "--adapterdrop-max must be a non-negative integer.")
        need(is_int(self.drop_first) and self.drop_first >= 0,
             "--drop-first must be a non-negative integer.")
        need(is_int(self.checkpoints_to_keep) and self.checkpoints_to_keep >= 1,
             "checkpoints_to_keep must be a positive integer.")
        need(is_num(self.checkpoint_every) and self.checkpoint_every >= 0,
             f"--checkpoint-every must be a non-negative number of seconds (0: every epoch), "
             f"got {_short(self.checkpoint_every)}.")
        need(self.data is None or is_str_list(self.data),
             "--data must be a comma-separated list of files.")
        need(self.text_columns is None or is_str_list(self.text_columns),
             "--text-columns must be a comma-separated list of column names.")
        need(self.matmul_precision in MATMUL_PRECISIONS,
             f"--matmul-precision must be one of {', '.join(MATMUL_PRECISIONS)}.")
        need(self.metric is None or self.metric in METRIC_CHOICES,
             f"--metric must be one of {', '.join(METRIC_CHOICES)}.")
        need(all(v is None or (isinstance(v, str) and v) for v in (
            self.data_config, self.split_train, self.split_test, self.split_dev)),
            "--data-config and --split-* must be names.")
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
        need(isinstance(self.rational_init, str) and self.rational_init in INITS,
             f"Unknown --rational-init {_short(self.rational_init)}; choose one of: "
             f"{', '.join(INITS)}.")
        need(isinstance(self.hard_switch, bool), "hard_switch must be true or false.")
        need(isinstance(self.adapter, str) and self.adapter in KINDS,
             f"Unknown --adapter {self.adapter!r}; choose one of: {', '.join(KINDS)}.")
        need(self.adapter_options is None or isinstance(self.adapter_options, dict),
             "adapter_options must be an object of the adapter kind's options.")
        # The kind's own options declare their rules; stored complete, so that a run's
        # identity does not depend on which defaults were spelled out.
        self.adapter_options = dataclasses.asdict(
            KINDS[self.adapter].make_options(self.adapter_options))
        check_temperature(self.temperature)
        need(self.top_k is None or (is_int(self.top_k) and self.top_k >= 1),
             f"--top-k must be a positive integer, got {_short(self.top_k)}.")
        need(isinstance(self.dtype, str) and self.dtype in DTYPES,
             f"Unknown --dtype {self.dtype!r}; choose one of: "
             f"{', '.join(DTYPES)}.")


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def precision_scope(config: TrainConfig):
    """The context a run's programs are traced and compiled in: ``--matmul-precision
    highest`` sets JAX's default matmul precision; ``default`` leaves the device's."""
    import contextlib

    import jax

    if config.matmul_precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(config.matmul_precision)

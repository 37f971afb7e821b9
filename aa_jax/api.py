"""The pieces for a training loop of your own, none of which needs a
:class:`~aa_jax.config.TrainConfig` (with :func:`aa_jax.run_setup.build_classifier`, which
builds the model and its parameters for a run as well).

::

    pre = aa_jax.load_pretrained("minilm")
    arch = aa_jax.architecture_for("aa", pre.config.num_hidden_layers)
    model, trainable, frozen = aa_jax.build_classifier(pre, arch, num_labels=2)
    tx = aa_jax.make_optimizer(None, total_steps, trainable)      # groups and rates
    state = aa_jax.init_state(trainable, tx)
    step = aa_jax.make_train_step(model, tx)
    state, metrics = step(state, frozen, aa_jax.make_batch(pre, texts, labels), key)
    aa_jax.switch_probabilities_of(state.trainable)               # {layer: p(adapter)}
    aa_jax.save_adapters("out", state.trainable, architecture=arch, base_model=pre,
                         labels=["neg", "pos"])

``trainable`` holds what trains (adapters, switches, rationals, the head) and ``frozen``
the pretrained backbone; :func:`aa_jax.merge` joins them for ``model.apply``. The
tutorial (``docs/tutorial.py``) is this loop, whole.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def make_batch(pretrained, texts: Sequence[str], labels: Sequence[Any] | None = None, *,
               pairs: Sequence[str] | None = None, max_length: int = 128) -> dict:
    """One batch for :func:`~aa_jax.make_train_step` or ``model.apply``: ``texts`` (and
    their second sentences ``pairs``) tokenised as ``pretrained``'s tokenizer joins them,
    padded to the longest, with ``labels`` (class ids, or floats for regression) and
    ``weights`` of one. Returns numpy arrays: ``input_ids``, ``attention_mask`` and the
    family's other inputs <int32>[batch, length], ``labels``, ``weights``."""
    from aa_jax.data import pipeline

    columns = [list(texts)] + ([list(pairs)] if pairs is not None else [])
    encoded = pipeline.encode(pretrained.tokenizer, columns, max_length)
    y = np.zeros(len(encoded)) if labels is None else np.asarray(labels)
    y = y.astype(np.float32 if np.issubdtype(y.dtype, np.floating) else np.int32)
    length = max(len(ids) for ids in encoded.input_ids)
    batch = next(pipeline.batches(encoded, y, batch_size=len(encoded), buckets=[length]))
    if labels is None:
        del batch["labels"]
    return batch


def switch_probabilities_of(params: dict) -> dict[int, float]:
    """``{layer: p(adapter)}`` of every layer's switch in a parameter tree (full or
    trainable, either layout): softmax of the selection's logits. Empty without switches."""
    from aa_jax.selection import selection_logits
    from aa_jax.switch import ADAPTER, switch_probabilities

    logits = selection_logits(params)
    if logits is None:
        return {}
    probs = np.asarray(switch_probabilities(logits))
    return {i: float(p[ADAPTER]) for i, p in enumerate(probs)}


def rationals_of(params: dict) -> dict[int, dict[str, np.ndarray]]:
    """``{layer: {"numerator": ..., "denominator": ...}}`` of every learned rational
    activation in a parameter tree (either layout)."""
    from flax.traverse_util import flatten_dict

    from aa_jax.params import layer_params

    found: dict[int, dict[str, np.ndarray]] = {}
    for layer, tree in layer_params(params).items():
        for path, value in flatten_dict(tree).items():
            if "rational" in path and path[-1] in ("numerator", "denominator"):
                found.setdefault(layer, {})[path[-1]] = np.asarray(value)
    return found

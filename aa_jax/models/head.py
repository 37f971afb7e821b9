"""The sequence classifier every family shares: backbone -> pooling -> dropout -> linear.

A family's classifier is this module with its backbone class set
(``BertForSequenceClassification``, ``RobertaForSequenceClassification``,
``MPNetForSequenceClassification``); :func:`aa_jax.models.registry.classifier_for` picks
it from a config. The backbone's parameters sit under the family's prefix (``bert``,
``roberta``, ``mpnet``, as in Hugging Face's checkpoints), the head's under
``classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from aa_jax.adapters import Architecture
from aa_jax.errors import UserError
from aa_jax.models.layers import Dropout

# "auto" is resolved to one of the others before a model is built (resolve_pooling).
POOLINGS = ("auto", "pooler", "mean", "cls", "max")


# sentence-transformers pooling modes aa_jax implements, by the key that switches them on.
_ST_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                     "pooling_mode_max_tokens": "max"}


def declared_pooling(path: str | Path) -> str | None:
    """The pooling a sentence-transformers checkpoint declares, or None if it declares none.

    Reads ``modules.json`` and the config of its Pooling module (``1_Pooling/config.json``
    in sentence-transformers' layout): ``"mean"``, ``"cls"`` or ``"max"``. Modules after the
    pooling (such as Normalize) are not part of a classification head and are ignored.
    """
    path = Path(path)
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text())
        pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
        if not pooling:
            return None
        config = json.loads((path / pooling[0].get("path", "") / "config.json").read_text())
    except (OSError, ValueError, AttributeError, TypeError):
        raise UserError(f"The sentence-transformers files in {path} (modules.json and its "
                        f"Pooling config) could not be read; fix them or pass --pooling "
                        f"explicitly.") from None
    if not isinstance(config, dict):
        raise UserError(f"The Pooling config in {path} is not a JSON object; fix it or pass "
                        f"--pooling explicitly.")
    on = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v is True)
    if len(on) == 1 and on[0] in _ST_POOLING_MODES:
        return _ST_POOLING_MODES[on[0]]
    raise UserError(f"{path} declares the pooling {', '.join(on) or 'none'}, which aa_jax "
                    f"does not implement; pass --pooling pooler, mean, cls or max.")


def model_inputs(model, batch) -> dict:
    """The arrays of ``batch`` that ``model`` (a backbone or classifier) takes, by name:
    ``model.apply(variables, **model_inputs(model, batch), ...)``."""
    return {name: batch[name] for name in model.inputs if name in batch}


class SequenceClassifier(nn.Module):
    """Backbone -> pooling -> dropout -> linear; ``num_labels == 1`` is regression.

    ``pooling="pooler"`` is the backbone's own pooled first-token output (the paper's
    head). The sentence-transformers poolings read the last hidden states instead:
    ``"mean"`` (over real tokens), ``"cls"`` (the first token's state, no pooler) and
    ``"max"`` (over real tokens). They matter for checkpoints whose pooler was never
    trained, such as sentence-transformers' MiniLM and MPNet (trained with mean pooling),
    whose pooled output barely varies between inputs.

    Called with the backbone's inputs (:attr:`inputs`, positionally in that order or by
    name), ``deterministic`` and ``adapter_drop`` as the backbone takes them. Returns
    ``(logits <float32>[batch, num_labels], aux)`` (float64 for a float64 model); ``aux``
    is empty here and kept for heads that report more. Switch probabilities are sown as
    ``intermediates`` (``.../slot/switch/switch_probs``, stacked over the layers of a
    scanned run): apply with ``mutable=["intermediates"]`` to read them.
    """

    backbone: ClassVar[type]  # set by each family's subclass

    config: Any
    num_labels: int
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    pooling: str = "pooler"
    scan: bool | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.backbone.inputs

    @classmethod
    def from_pretrained(cls, pretrained, num_labels: int,
                        architecture: Architecture | None = None, pooling: str = "auto",
                        **kwargs) -> "SequenceClassifier":
        """The model for a loaded checkpoint (:func:`aa_jax.models.loader.load_pretrained`):
        its family's classifier, its config, and ``pooling="auto"`` resolved to what the
        checkpoint declares (``"mean"`` for MiniLM and MPNet), else the paper's
        ``"pooler"``."""
        if pooling == "auto":
            pooling = declared_pooling(pretrained.path) or "pooler"
        classifier = pretrained.family.classifier
        return classifier(pretrained.config, num_labels, architecture, pooling=pooling,
                          **kwargs)

    @nn.compact
    def __call__(self, *args, deterministic: bool = True, adapter_drop=None, **named):
        c = self.config
        if self.pooling == "auto":
            raise UserError(f"pooling='auto' depends on the checkpoint; build the model with "
                            f"{type(self).__name__}.from_pretrained(pre, num_labels, "
                            f"architecture), or pass resolve_pooling('auto', pre).")
        if self.pooling not in POOLINGS:
            raise UserError(f"Unknown pooling {self.pooling!r}; choose one of: "
                            f"{', '.join(p for p in POOLINGS if p != 'auto')}.")
        model_type = getattr(c, "model_type", None)
        if model_type not in (None, self.backbone.prefix):
            raise UserError(f"{type(self).__name__} runs {self.backbone.prefix} configs, not "
                            f"{model_type}; build the model with "
                            f"aa_jax.classifier_for(config) or from_pretrained.")
        if len(args) > len(self.inputs):
            raise TypeError(f"{type(self).__name__} takes at most {len(self.inputs)} "
                            f"positional inputs ({', '.join(self.inputs)})")
        named.update(zip(self.inputs, args))
        unknown = sorted(set(named) - set(self.inputs))
        if unknown:
            raise TypeError(f"{type(self).__name__} takes the inputs {', '.join(self.inputs)}"
                            f", not {', '.join(unknown)}")
        input_ids, attention_mask = named["input_ids"], named.get("attention_mask")
        backbone = self.backbone(c, self.architecture, self.dtype, self.scan,
                                 name=self.backbone.prefix)
        last, pooled = backbone(**named, deterministic=deterministic,
                                adapter_drop=adapter_drop)
        # The head reads float32 (or float64) whatever the backbone computed in.
        head_dtype = jnp.promote_types(self.dtype, jnp.float32)
        last, pooled = last.astype(head_dtype), pooled.astype(head_dtype)
        real = (jnp.ones_like(input_ids) if attention_mask is None
                else attention_mask)[..., None] > 0
        if self.pooling == "mean":
            mask = real.astype(last.dtype)
            pooled = jnp.sum(last * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
        elif self.pooling == "cls":
            pooled = last[:, 0]
        elif self.pooling == "max":
            pooled = jnp.max(jnp.where(real, last, jnp.finfo(last.dtype).min), axis=1)
        rate = getattr(c, "classifier_dropout", None)
        rate = c.hidden_dropout_prob if rate is None else rate
        pooled = Dropout(rate)(pooled, deterministic=deterministic)
        logits = nn.Dense(self.num_labels, name="classifier",
                          kernel_init=nn.initializers.normal(c.initializer_range))(pooled)
        return logits.astype(head_dtype), {}

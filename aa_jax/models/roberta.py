"""RoBERTa: BERT's layers with position ids counted from the padding index and one token
type; its family entry.

Hugging Face's ``RobertaModel`` numbers the positions of real tokens
``padding_idx + 1, padding_idx + 2, ...`` and gives padding ``padding_idx`` (so the
``max_position_embeddings`` of 514 cover 512 tokens); its single token type (row 0) is
added to every token. Everything after the embeddings is the shared transformer layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
from transformers import RobertaConfig

from aa_jax.adapters import Architecture
from aa_jax.models.family import Family
from aa_jax.models.head import SequenceClassifier
from aa_jax.models.layers import (Dropout, Encoder, Pooler, attention_bias, check_length,
                                  layer_norm)


def padded_positions(input_ids, padding_idx: int):
    """Hugging Face's ``create_position_ids_from_input_ids``: real tokens (ids other than
    ``padding_idx``) get ``padding_idx + 1, + 2, ...`` in order, padding ``padding_idx``."""
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + padding_idx


def position_capacity(config) -> int:
    """The longest sequence the position table covers (514 rows: 512 tokens)."""
    return config.max_position_embeddings - config.pad_token_id - 1


class RobertaEmbeddings(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, deterministic: bool):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        positions = padded_positions(input_ids, c.pad_token_id)
        x = (nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                      name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, embedding_init=init,
                        name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size, embedding_init=init,
                        name="token_type_embeddings")(jnp.zeros_like(input_ids)))
        x = layer_norm(c, self.dtype)(x.astype(self.dtype))
        return Dropout(c.hidden_dropout_prob, (1,))(x, deterministic=deterministic)


class RobertaModel(nn.Module):
    """Embeddings -> encoder layers (with adapter slots) -> pooler; the attributes and the
    call are :class:`aa_jax.models.bert.BertModel`'s, without token types."""

    prefix: ClassVar[str] = "roberta"
    inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    config: Any
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    scan: bool | None = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, deterministic: bool = True,
                 adapter_drop=None):
        c = self.config
        arch = self.architecture or Architecture.none(c.num_hidden_layers)
        arch.check_depth(c.num_hidden_layers)
        check_length(input_ids.shape[-1], position_capacity(c))
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = RobertaEmbeddings(c, self.dtype, name="embeddings")(input_ids, deterministic)
        x = Encoder(c, arch, self.dtype, self.scan, name="encoder")(
            x, attention_bias(attention_mask), deterministic, adapter_drop)
        return x, Pooler(c, self.dtype, name="pooler")(x)


class RobertaForSequenceClassification(SequenceClassifier):
    """RoBERTa -> pooling -> dropout -> linear (:class:`aa_jax.models.head.SequenceClassifier`)."""

    backbone: ClassVar[type] = RobertaModel


# roberta-base and roberta-large as published, so sizes are known without a download.
_COMMON = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
               layer_norm_eps=1e-5, initializer_range=0.02)

FAMILY = Family(
    model_type="roberta",
    title="RoBERTa",
    prefix=RobertaModel.prefix,
    config_class=RobertaConfig,
    model=RobertaModel,
    classifier=RobertaForSequenceClassification,
    inputs=RobertaModel.inputs,
    rules=(
        (r"embeddings/(word|position|token_type)_embeddings/embedding", "frozen"),
        (r"embeddings/LayerNorm/(scale|bias)", "frozen"),
        (r"pooler/dense/(kernel|bias)", "frozen"),
    ),
    max_tokens=position_capacity,
    hub_ids={"roberta-base": "FacebookAI/roberta-base",
             "roberta-large": "FacebookAI/roberta-large"},
    known_configs={
        "FacebookAI/roberta-base": dict(hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, intermediate_size=3072,
                                        **_COMMON),
        "FacebookAI/roberta-large": dict(hidden_size=1024, num_hidden_layers=24,
                                         num_attention_heads=16, intermediate_size=4096,
                                         **_COMMON),
    },
)

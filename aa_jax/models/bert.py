"""A Flax (linen) BERT encoder with an adapter slot in every layer, and its task heads.

The module tree mirrors Hugging Face's ``BertModel`` so that checkpoint keys map onto it
mechanically (see :mod:`aa_jax.models.loader`): ``embeddings``, ``encoder/layer_{i}``
(``attention/self/{query,key,value}``, ``attention/output/{dense,LayerNorm}``,
``intermediate/dense``, ``output/{dense,LayerNorm}``), ``pooler/dense``. Each layer ends in
an :class:`aa_jax.adapters.AdapterSlot`, so the adapter parameters live at
``encoder/layer_{i}/slot/adapter`` and the switch logits at ``encoder/layer_{i}/slot/switch``.

Works for any ``transformers.BertConfig`` (MiniLM, base, large).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aa_jax.adapters import AdapterSlot, Architecture
from aa_jax.errors import UserError

_ACT = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# Dropout draws 16 random bits per element, not 32: the keep probability is then a multiple
# of 2^-16 (0.1 becomes 6554 / 65536 = 0.100006), and the masks cost half the threefry
# calls. Dropout is the largest cost of a training step after the matmuls (measured on
# MiniLM at batch 32 x 128, 2 CPU cores: 0.35 s of a 1.2 s step with 32-bit draws).
_DROPOUT_BITS = 16


def dropout_keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array,
                                                                                     float]:
    """(keep mask <bool>[shape], keep probability) with P(drop) = round(rate * 2^16) / 2^16.

    Each uint32 draw gives two 16-bit words, split along the last axis so that a batch
    sharded over devices draws the same mask as on one device.
    """
    scale = 1 << _DROPOUT_BITS
    threshold = int(round(rate * scale))
    last = shape[-1]
    words = jax.random.bits(key, shape[:-1] + ((last + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & (scale - 1), words >> _DROPOUT_BITS], axis=-1)
    return halves[..., :last] >= threshold, (scale - threshold) / scale


class Dropout(nn.Module):
    """Inverted dropout with 16-bit masks (see ``dropout_keep_mask``), rng stream ``dropout``."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep, keep_prob = dropout_keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


def _dense(features: int, config, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, name=name)


class BertEmbeddings(nn.Module):
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
        x = _layer_norm(c, self.dtype)(x.astype(self.dtype))
        return Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        """x: [batch, length, hidden]; mask_bias: [batch, 1, 1, length] (0 or very negative)."""
        c = self.config
        heads = c.num_attention_heads
        head_dim = c.hidden_size // heads

        def split(t):  # [batch, length, hidden] -> [batch, heads, length, head_dim]
            return t.reshape(t.shape[:2] + (heads, head_dim)).transpose(0, 2, 1, 3)

        # Heads-major layout: the two attention products are plain batched matmuls over
        # (batch, heads). Contracting the [batch, length, heads, head_dim] layout directly
        # with einsum made XLA:CPU copy the operands around each product, which cost as
        # much as the products themselves (measured: 26 ms against 11 ms per layer for
        # MiniLM at batch 32 x 128).
        q = split(_dense(c.hidden_size, c, self.dtype, "query")(x))
        k = split(_dense(c.hidden_size, c, self.dtype, "key")(x))
        v = split(_dense(c.hidden_size, c, self.dtype, "value")(x))
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)) / jnp.sqrt(head_dim).astype(self.dtype)
        # Softmax in float32: bf16 logits lose the small differences attention depends on.
        probs = jax.nn.softmax(scores.astype(jnp.float32) + mask_bias, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob)(
            probs.astype(self.dtype), deterministic=deterministic)
        out = jnp.matmul(probs, v).transpose(0, 2, 1, 3)
        return out.reshape(out.shape[:2] + (c.hidden_size,))


class BertAttention(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        c = self.config
        s = BertSelfAttention(c, self.dtype, name="self")(x, mask_bias, deterministic)
        out = BertSelfOutput(c, self.dtype, name="output")
        return out(s, x, deterministic)


class BertSelfOutput(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, s, x, deterministic: bool):
        c = self.config
        s = _dense(c.hidden_size, c, self.dtype, "dense")(s)
        s = Dropout(c.hidden_dropout_prob)(s, deterministic=deterministic)
        return _layer_norm(c, self.dtype)(s + x)


class BertIntermediate(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        if c.hidden_act not in _ACT:
            raise UserError(f"Unsupported hidden_act {c.hidden_act!r} in the BERT config; "
                            f"supported: {', '.join(_ACT)}.")
        return _ACT[c.hidden_act](_dense(c.intermediate_size, c, self.dtype, "dense")(x))


class BertOutputBlock(nn.Module):
    """The FFN's second dense + dropout, then the adapter slot with the output LayerNorm."""

    config: Any
    spec: Any
    architecture: Architecture
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, intermediate, inp, deterministic: bool, drop=None):
        c = self.config
        h = _dense(c.hidden_size, c, self.dtype, "dense")(intermediate)
        h = Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        slot = AdapterSlot(self.spec, self.architecture, c.hidden_size, self.dtype,
                           name="slot")
        return slot(h, inp, _layer_norm(c, self.dtype), deterministic=deterministic,
                    drop=drop)


class BertLayer(nn.Module):
    config: Any
    layer_index: int
    architecture: Architecture
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool, adapter_drop=None):
        c = self.config
        spec = self.architecture.layers[self.layer_index]
        inp = BertAttention(c, self.dtype, name="attention")(x, mask_bias, deterministic)
        inter = BertIntermediate(c, self.dtype, name="intermediate")(inp)
        drop = None if adapter_drop is None else self.layer_index < adapter_drop
        return BertOutputBlock(c, spec, self.architecture, self.dtype, name="output")(
            inter, inp, deterministic, drop)


class BertModel(nn.Module):
    """Embeddings -> encoder layers (with adapter slots) -> pooler.

    Attributes:
      config: a ``transformers.BertConfig``.
      architecture: where adapters go; default none (the plain pretrained encoder).
      dtype: computation dtype (params stay float32; rationals always compute in float32).
    """

    config: Any
    architecture: Architecture | None = None
    dtype: Any = jnp.float32

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
        if input_ids.shape[-1] > c.max_position_embeddings:
            raise UserError(
                f"Sequences of length {input_ids.shape[-1]} exceed the model's "
                f"{c.max_position_embeddings} position embeddings; use --max-length "
                f"{c.max_position_embeddings} or less.")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                              jnp.finfo(jnp.float32).min).astype(jnp.float32)
        x = BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids,
                                                              deterministic)
        x = BertEncoder(c, arch, self.dtype, name="encoder")(x, mask_bias, deterministic,
                                                             adapter_drop)
        pooled = BertPooler(c, self.dtype, name="pooler")(x)
        return x, pooled


class BertEncoder(nn.Module):
    config: Any
    architecture: Architecture
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool, adapter_drop=None):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, i, self.architecture, self.dtype, name=f"layer_{i}")(
                x, mask_bias, deterministic, adapter_drop)
        return x


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])), the pretrained (and frozen) sentence representation."""

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, "dense")(
            x[:, 0]))


# "auto" is resolved to one of the others before a model is built (train.resolve_pooling).
POOLINGS = ("auto", "pooler", "mean", "cls", "max")


class BertForSequenceClassification(nn.Module):
    """BERT -> pooler (frozen) -> dropout -> linear; ``num_labels == 1`` is regression.

    ``pooling="pooler"`` is BERT's own pooled [CLS] output (the paper's head). The
    sentence-transformers poolings read the last hidden states instead: ``"mean"`` (over
    real tokens), ``"cls"`` (the [CLS] state, no pooler) and ``"max"`` (over real tokens).
    They matter for checkpoints whose pooler was never trained, such as
    sentence-transformers' MiniLM (trained with mean pooling), whose pooled output barely
    varies between inputs.

    Returns ``(logits <float32>[batch, num_labels], aux)`` (float64 for a float64 model);
    ``aux`` is empty here and kept for heads that report more. Switch probabilities are sown as ``intermediates``
    (``.../slot/switch/switch_probs``): apply with ``mutable=["intermediates"]`` to read
    them.
    """

    config: Any
    num_labels: int
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    pooling: str = "pooler"

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None,
                 deterministic: bool = True, adapter_drop=None):
        c = self.config
        if self.pooling not in POOLINGS or self.pooling == "auto":
            raise UserError(f"Unknown pooling {self.pooling!r}; choose one of: "
                            f"{', '.join(p for p in POOLINGS if p != 'auto')}.")
        last, pooled = BertModel(c, self.architecture, self.dtype, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, adapter_drop)
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

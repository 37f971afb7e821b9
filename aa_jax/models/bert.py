"""A Flax (linen) BERT encoder with an adapter slot in every layer, and its task heads.

The module tree mirrors Hugging Face's ``BertModel`` so that checkpoint keys map onto it
mechanically (see :mod:`aa_jax.models.loader`): ``embeddings``, ``encoder/layer_{i}``
(``attention/self/{query,key,value}``, ``attention/output/{dense,LayerNorm}``,
``intermediate/dense``, ``output/{dense,LayerNorm}``), ``pooler/dense``. Each layer ends in
an :class:`aa_jax.adapters.AdapterSlot`, so the adapter parameters live at
``encoder/layer_{i}/output/slot/adapter`` and the switch logits at
``encoder/layer_{i}/output/slot/switch``. On accelerators the encoder runs scanned by
default, with the layers of each run of identical specs stacked under
``encoder/layers_{first}_{last}`` (on the CPU unrolled, see :func:`scans`);
:mod:`aa_jax.params` converts between the layouts.

Works for any ``transformers.BertConfig`` (MiniLM, base, large).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from aa_jax.adapters import (KINDS, NO_ADAPTER, AdapterSlot, Architecture, LayerSpec,
                             LoraSite)
from aa_jax.errors import UserError
from aa_jax.params import stack_layers, stack_name

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


def dropout_keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...],
                      positions: tuple[int, ...] = ()) -> tuple[jax.Array, float]:
    """(keep mask <bool>[shape], keep probability) with P(drop) = round(rate * 2^16) / 2^16.

    Counter-based: element ``e`` keeps when its 16 random bits, one quarter of
    ``threefry2x32(k, (c1, c2))``, reach the threshold, where ``k`` is two words drawn
    from ``key``, ``c1`` encodes ``e``'s index along the ``positions`` axes (the sequence
    axes, at most two, each shorter than 2^16) and ``c2`` its index along the other axes;
    four consecutive elements of the last axis share one hash. The counters do not depend
    on the lengths of the ``positions`` axes, so the mask at a token is the same however
    far the batch is padded: seeds trained together on widened batches draw exactly the
    masks of their one-by-one runs. Threefry-2x32 with 20 rounds is the function behind
    JAX's default PRNG; distinct counters under one key give its independent streams.
    """
    if len(positions) > 2 or any(shape[a] >= 1 << 16 for a in positions):
        raise ValueError(f"dropout positions {positions} of shape {shape}: at most two "
                         f"axes, each shorter than 65536")
    scale = 1 << _DROPOUT_BITS
    threshold = int(round(rate * scale))
    last = len(shape) - 1
    groups = shape[:-1] + (-(-shape[-1] // 4),)  # the last axis in groups of four
    c1, c2, stride = jnp.uint32(0), jnp.uint32(0), 1
    for axis in reversed(range(len(shape))):
        index = jax.lax.broadcasted_iota(jnp.uint32, groups, axis)
        if axis in positions:
            c1 = c1 * jnp.uint32(1 << 16) + index
        else:
            c2 = c2 + index * jnp.uint32(stride)
            stride *= groups[axis]
    k1, k2 = jax.random.bits(key, (2,), jnp.uint32)
    y1, y2 = threefry2x32_p.bind(k1, k2, *jnp.broadcast_arrays(c1, c2))
    mask = jnp.uint32(scale - 1)
    pieces = jnp.stack([y1 & mask, y1 >> _DROPOUT_BITS, y2 & mask, y2 >> _DROPOUT_BITS],
                       axis=-1)
    bits = pieces.reshape(groups[:-1] + (4 * groups[-1],))[..., :shape[last]]
    return bits >= threshold, (scale - threshold) / scale


class Dropout(nn.Module):
    """Inverted dropout with 16-bit masks (see ``dropout_keep_mask``) drawn with ``key``,
    by default from the rng stream ``dropout``; ``positions``: the input's sequence axes."""

    rate: float
    positions: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool,
                 key: jax.Array | None = None) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = self.make_rng("dropout") if key is None else key
        keep, keep_prob = dropout_keep_mask(key, self.rate, x.shape, self.positions)
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
        return Dropout(c.hidden_dropout_prob, (1,))(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention; with a LoRA ``spec`` (adapter kind ``lora``), the query
    and value projections carry their low-rank updates (:class:`aa_jax.adapters.LoraSite`,
    at ``attention/self/lora/{query,value}``)."""

    config: Any
    dtype: Any = jnp.float32
    spec: LayerSpec = NO_ADAPTER
    architecture: Architecture | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool, drop=None, keys=None):
        """x: [batch, length, hidden]; mask_bias: [batch, 1, 1, length] (0 or very negative);
        ``keys``: None, or the keys of (the probabilities' dropout, the LoRA switch)."""
        dropout_key, switch_key = (None, None) if keys is None else keys
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
        q = _dense(c.hidden_size, c, self.dtype, "query")(x)
        k = split(_dense(c.hidden_size, c, self.dtype, "key")(x))
        v = _dense(c.hidden_size, c, self.dtype, "value")(x)
        if self.spec.adapter and (drop is not True or self.is_initializing()):
            dq, dv = LoraSite(self.spec, self.architecture, c.hidden_size, self.dtype,
                              name="lora")(x, deterministic, drop, switch_key)
            q, v = q + dq, v + dv
        q, v = split(q), split(v)
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)) / jnp.sqrt(head_dim).astype(self.dtype)
        # Softmax in float32: bf16 logits lose the small differences attention depends on.
        probs = jax.nn.softmax(scores.astype(jnp.float32) + mask_bias, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob, (2, 3))(
            probs.astype(self.dtype), deterministic=deterministic, key=dropout_key)
        out = jnp.matmul(probs, v).transpose(0, 2, 1, 3)
        return out.reshape(out.shape[:2] + (c.hidden_size,))


class BertAttention(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    spec: LayerSpec = NO_ADAPTER
    architecture: Architecture | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool, drop=None, keys=None):
        """``keys``: None, or those of (the probabilities' dropout, the output's dropout,
        the LoRA switch)."""
        c = self.config
        probs_key, out_key, switch_key = (None,) * 3 if keys is None else keys
        s = BertSelfAttention(c, self.dtype, self.spec, self.architecture, name="self")(
            x, mask_bias, deterministic, drop,
            None if keys is None else (probs_key, switch_key))
        out = BertSelfOutput(c, self.dtype, name="output")
        return out(s, x, deterministic, out_key)


class BertSelfOutput(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, s, x, deterministic: bool, key=None):
        c = self.config
        s = _dense(c.hidden_size, c, self.dtype, "dense")(s)
        s = Dropout(c.hidden_dropout_prob, (1,))(s, deterministic=deterministic, key=key)
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
    def __call__(self, intermediate, inp, deterministic: bool, drop=None, keys=None):
        """``keys``: None, or those of (the dropout, the slot's switch)."""
        c = self.config
        dropout_key, switch_key = (None, None) if keys is None else keys
        h = _dense(c.hidden_size, c, self.dtype, "dense")(intermediate)
        h = Dropout(c.hidden_dropout_prob, (1,))(h, deterministic=deterministic,
                                                 key=dropout_key)
        slot = AdapterSlot(self.spec, self.architecture, c.hidden_size, self.dtype,
                           name="slot")
        return slot(h, inp, _layer_norm(c, self.dtype), deterministic=deterministic,
                    drop=drop, key=switch_key)


class BertLayer(nn.Module):
    """One transformer layer with the adapter its ``spec`` describes.

    The signature is a scan body's: ``(x, mask_bias, drop, keys) -> (x, None)``. ``drop``
    (AdapterDrop) removes this layer's adapter: None (keep it), a Python bool (static:
    a dropped adapter is not computed), or a traced <bool>[] (the per-step draw, and the
    scanned encoder's per-layer flag; a dropped adapter is skipped by ``cond``).
    ``keys`` (training): the layer's <key>[2], its dropout key and its switch key; its
    three dropouts draw with keys split from the first.
    """

    config: Any
    spec: LayerSpec
    architecture: Architecture
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask_bias, drop=None, keys=None):
        c = self.config
        # The adapter sits where its kind says: the attention's projections or the slot.
        at_attention = KINDS[self.architecture.adapter].site == "attention"
        attention_spec, slot_spec = ((self.spec, NO_ADAPTER) if at_attention
                                     else (NO_ADAPTER, self.spec))
        attention_keys = output_keys = None
        if keys is not None:
            probs, out, ffn = jax.random.split(keys[0], 3)
            attention_keys, output_keys = (probs, out, keys[1]), (ffn, keys[1])
        inp = BertAttention(c, self.dtype, attention_spec, self.architecture,
                            name="attention")(x, mask_bias, self.deterministic, drop,
                                              attention_keys)
        inter = BertIntermediate(c, self.dtype, name="intermediate")(inp)
        out = BertOutputBlock(c, slot_spec, self.architecture, self.dtype, name="output")(
            inter, inp, self.deterministic, drop, output_keys)
        return out, None


def segments(architecture: Architecture) -> list[tuple[int, int]]:
    """The runs ``(first, last)`` of consecutive layers with identical specs: each runs as
    one scan (baseline, AA, rational-only, switch-only: one; last-n: two)."""
    runs: list[tuple[int, int]] = []
    for i, spec in enumerate(architecture.layers):
        if runs and architecture.layers[runs[-1][0]] == spec:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def scans(scan: bool | None) -> bool:
    """Whether an encoder built with ``scan`` runs scanned: None (the default) scans on
    accelerators and unrolls on the CPU, where the scan's loop cost about a fifth of a
    MiniLM training step (the README's Speed section)."""
    return jax.default_backend() != "cpu" if scan is None else bool(scan)


def layer_keys(dropout_key: jax.Array, gumbel_key: jax.Array, layers) -> jax.Array:
    """<key>[len(layers), 2]: layer ``i``'s dropout and switch keys, ``dropout_key`` and
    ``gumbel_key`` each folded with ``i``. They depend on the layer's index only, so the
    scanned and the unrolled encoder draw the same noise."""
    index = jnp.asarray(list(layers), jnp.uint32)
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    return jnp.stack([fold(dropout_key, index), fold(gumbel_key, index)], axis=1)


def encoder_segments(model) -> list[tuple[int, int]]:
    """The stacked segments of a ``BertModel``'s or classifier's encoder ([] unrolled)."""
    if not scans(model.scan):
        return []
    return segments(model.architecture or Architecture.none(model.config.num_hidden_layers))


def in_layout(params: dict, model) -> dict:
    """Per-layer ``params`` (e.g. ``load_pretrained(...).params``) in ``model``'s layout:
    ``model.apply({"params": in_layout(pre.params, model)}, ...)``."""
    return stack_layers(params, encoder_segments(model))


class BertEncoder(nn.Module):
    """The layers, scanned (``encoder/layers_{first}_{last}``, stacked parameters; see
    :mod:`aa_jax.params`) or unrolled (``encoder/layer_{i}``).

    Scanned, each run of identical layers is traced and compiled once, whatever the
    depth. In training every layer draws its own dropout and Gumbel noise from keys that
    depend on its index only (:func:`layer_keys`), so both compute the same function of
    the same parameters, noise included. That needs both rng streams, ``dropout`` and
    ``gumbel``, as the training step passes them; given one only, each module draws from
    its stream itself, and the two layouts draw different noise. ``scan``: see
    :func:`scans`.
    """

    config: Any
    architecture: Architecture
    dtype: Any = jnp.float32
    scan: bool | None = None

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool, adapter_drop=None):
        c, arch = self.config, self.architecture
        keys = None
        if not deterministic and self.has_rng("dropout") and self.has_rng("gumbel"):
            keys = layer_keys(self.make_rng("dropout"), self.make_rng("gumbel"),
                              range(len(arch.layers)))
        if not scans(self.scan):
            for i, spec in enumerate(arch.layers):
                drop = None if adapter_drop is None else i < adapter_drop
                x, _ = BertLayer(c, spec, arch, self.dtype, deterministic,
                                 name=f"layer_{i}")(x, mask_bias, drop,
                                                    None if keys is None else keys[i])
            return x
        for first, last in segments(arch):
            spec = arch.layers[first]
            if adapter_drop is None or not spec.adapter:
                drops, drop_axis = None, nn.broadcast
            else:  # each layer's flag, scanned with its parameters
                drops, drop_axis = jnp.arange(first, last + 1) < adapter_drop, 0
            own_keys, keys_axis = ((None, nn.broadcast) if keys is None
                                   else (keys[first:last + 1], 0))
            layers = nn.scan(BertLayer, variable_axes={"params": 0, "intermediates": 0},
                             split_rngs={"params": True, "dropout": True, "gumbel": True},
                             in_axes=(nn.broadcast, drop_axis, keys_axis),
                             length=last - first + 1)
            x, _ = layers(c, spec, arch, self.dtype, deterministic,
                          name=stack_name(first, last))(x, mask_bias, drops, own_keys)
        return x


class BertModel(nn.Module):
    """Embeddings -> encoder layers (with adapter slots) -> pooler.

    Attributes:
      config: a ``transformers.BertConfig``.
      architecture: where adapters go; default none (the plain pretrained encoder).
      dtype: computation dtype (params stay float32; rationals always compute in float32).
      scan: run identical consecutive layers as one ``nn.scan`` (stacked parameters); False
        unrolls them (``encoder/layer_{i}``, the layout of pretrained checkpoints); None
        (the default) scans except on the CPU (:func:`scans`).
    """

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
        x = BertEncoder(c, arch, self.dtype, self.scan, name="encoder")(
            x, mask_bias, deterministic, adapter_drop)
        pooled = BertPooler(c, self.dtype, name="pooler")(x)
        return x, pooled


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
    ``aux`` is empty here and kept for heads that report more. Switch probabilities are
    sown as ``intermediates`` (``.../slot/switch/switch_probs``, stacked over the layers of
    a scanned run): apply with ``mutable=["intermediates"]`` to read them.
    """

    config: Any
    num_labels: int
    architecture: Architecture | None = None
    dtype: Any = jnp.float32
    pooling: str = "pooler"
    scan: bool | None = None

    @classmethod
    def from_pretrained(cls, pretrained, num_labels: int,
                        architecture: Architecture | None = None, pooling: str = "auto",
                        **kwargs) -> "BertForSequenceClassification":
        """The model for a loaded checkpoint (:func:`aa_jax.models.loader.load_pretrained`):
        its config, and ``pooling="auto"`` resolved to what the checkpoint declares
        (``"mean"`` for MiniLM), else the paper's ``"pooler"``."""
        from aa_jax.models.loader import declared_pooling

        if pooling == "auto":
            pooling = declared_pooling(pretrained.path) or "pooler"
        return cls(pretrained.config, num_labels, architecture, pooling=pooling, **kwargs)

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None,
                 deterministic: bool = True, adapter_drop=None):
        c = self.config
        if self.pooling == "auto":
            raise UserError("pooling='auto' depends on the checkpoint; build the model with "
                            "BertForSequenceClassification.from_pretrained(pre, num_labels, "
                            "architecture), or pass resolve_pooling('auto', pre).")
        if self.pooling not in POOLINGS:
            raise UserError(f"Unknown pooling {self.pooling!r}; choose one of: "
                            f"{', '.join(p for p in POOLINGS if p != 'auto')}.")
        last, pooled = BertModel(c, self.architecture, self.dtype, self.scan, name="bert")(
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

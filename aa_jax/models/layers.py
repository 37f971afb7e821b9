"""The transformer layer every family shares, with its adapter attachment points.

Families whose layers compute the same math (BERT, RoBERTa, MPNet: post-LayerNorm
self-attention and feed-forward blocks) build the same modules here, under Hugging Face
BERT's names: ``encoder/layer_{i}`` holds ``attention/self/{query,key,value}``,
``attention/output/{dense,LayerNorm}``, ``intermediate/dense`` and
``output/{dense,LayerNorm}``; each family's checkpoint conversion maps its own names onto
these (MPNet's ``attention.attn.q`` becomes ``attention/self/query``). What differs
between families stays in their modules: the embeddings, an additive attention bias (the
padding mask, and MPNet's relative position bias, computed once per batch and shared by
every layer) and the pooler.

Adapters attach at two points of every layer, chosen by the adapter kind's ``site``: the
query and value projections (``attention/self/lora``) and the slot after the feed-forward
block (``output/slot``, an :class:`aa_jax.adapters.AdapterSlot` that owns the output
LayerNorm). On accelerators the encoder runs scanned by default, with the layers of each
run of identical specs stacked under ``encoder/layers_{first}_{last}`` (on the CPU
unrolled, see :func:`scans`); :mod:`aa_jax.layout` converts between the layouts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from aa_jax.adapters import NO_ADAPTER, Architecture, LayerSpec
from aa_jax.errors import UserError
from aa_jax.layout import stack_layers, stack_name
from aa_jax.selection import Selection, layers_off

# The frozen weights of one shared transformer layer, relative to ``encoder/layer_{i}``
# (see :mod:`aa_jax.params`).
LAYER_RULES: tuple[tuple[str, str], ...] = (
    (r"attention/self/(query|key|value)/(kernel|bias)", "frozen"),
    (r"attention/output/dense/(kernel|bias)", "frozen"),
    (r"(attention/output|output)/LayerNorm/(scale|bias)", "frozen"),
    (r"(intermediate|output)/dense/(kernel|bias)", "frozen"),
)

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


def dense(features: int, config, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, name=name,
                    kernel_init=nn.initializers.normal(config.initializer_range))


def layer_norm(config, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, name=name)


def _point(architecture: Architecture | None, spec: LayerSpec, point: str, off, init: bool):
    """The kind's module class at attachment ``point`` where this layer's adapter runs
    there in this call, else None (see :mod:`aa_jax.adapters.kind`)."""
    if architecture is None or not spec.adapter or (off is True and not init):
        return None
    return architecture.kind.modules.get(point)


class SelfAttention(nn.Module):
    """Multi-head self-attention, with the kind's ``attention`` module (e.g. LoRA's
    updates of the query and value projections) at ``attention/self/<kind>``."""

    config: Any
    dtype: Any = jnp.float32
    spec: LayerSpec = NO_ADAPTER
    architecture: Architecture | None = None

    @nn.compact
    def __call__(self, x, bias, deterministic: bool, gate=None, off=None, key=None):
        """x: [batch, length, hidden]; bias: the additive attention bias (float32,
        [batch or 1, heads or 1, length or 1, length], see :func:`attention_bias`);
        ``key``: None, or the key of the probabilities' dropout."""
        c, arch = self.config, self.architecture
        heads = c.num_attention_heads
        head_dim = c.hidden_size // heads

        def split(t):  # [batch, length, hidden] -> [batch, heads, length, head_dim]
            return t.reshape(t.shape[:2] + (heads, head_dim)).transpose(0, 2, 1, 3)

        # Heads-major layout: the two attention products are plain batched matmuls over
        # (batch, heads). Contracting the [batch, length, heads, head_dim] layout directly
        # with einsum made XLA:CPU copy the operands around each product, which cost as
        # much as the products themselves (measured: 26 ms against 11 ms per layer for
        # MiniLM at batch 32 x 128).
        q = dense(c.hidden_size, c, self.dtype, "query")(x)
        k = dense(c.hidden_size, c, self.dtype, "key")(x)
        v = dense(c.hidden_size, c, self.dtype, "value")(x)
        if module := _point(arch, self.spec, "attention", off, self.is_initializing()):
            q, k, v = module(self.spec, arch.options, arch, c, self.dtype,
                             name=arch.adapter)(x, q, k, v, gate, off)
        q, k, v = split(q), split(k), split(v)
        scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)) / jnp.sqrt(head_dim).astype(self.dtype)
        # Softmax in float32: bf16 logits lose the small differences attention depends on.
        probs = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1)
        probs = Dropout(c.attention_probs_dropout_prob, (2, 3))(
            probs.astype(self.dtype), deterministic=deterministic, key=key)
        out = jnp.matmul(probs, v).transpose(0, 2, 1, 3)
        return out.reshape(out.shape[:2] + (c.hidden_size,))


class Attention(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    spec: LayerSpec = NO_ADAPTER
    architecture: Architecture | None = None

    @nn.compact
    def __call__(self, x, bias, deterministic: bool, gate=None, off=None, keys=None):
        """``keys``: None, or those of (the probabilities' dropout, the output's dropout)."""
        c = self.config
        probs_key, out_key = (None, None) if keys is None else keys
        s = SelfAttention(c, self.dtype, self.spec, self.architecture, name="self")(
            x, bias, deterministic, gate, off, probs_key)
        out = SelfOutput(c, self.dtype, self.spec, self.architecture, name="output")
        return out(s, x, deterministic, gate, off, out_key)


class SelfOutput(nn.Module):
    """The attention's output projection (with the kind's ``attention_out`` module on
    its input, at ``attention/output/<kind>``), dropout, residual and LayerNorm."""

    config: Any
    dtype: Any = jnp.float32
    spec: LayerSpec = NO_ADAPTER
    architecture: Architecture | None = None

    @nn.compact
    def __call__(self, s, x, deterministic: bool, gate=None, off=None, key=None):
        c, arch = self.config, self.architecture
        if module := _point(arch, self.spec, "attention_out", off, self.is_initializing()):
            s = module(self.spec, arch.options, arch, c, self.dtype, name=arch.adapter)(
                s, gate, off)
        s = dense(c.hidden_size, c, self.dtype, "dense")(s)
        s = Dropout(c.hidden_dropout_prob, (1,))(s, deterministic=deterministic, key=key)
        return layer_norm(c, self.dtype)(s + x)


class Intermediate(nn.Module):
    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        if c.hidden_act not in _ACT:
            raise UserError(f"Unsupported hidden_act {c.hidden_act!r} in the model config; "
                            f"supported: {', '.join(_ACT)}.")
        return _ACT[c.hidden_act](dense(c.intermediate_size, c, self.dtype, "dense")(x))


class OutputBlock(nn.Module):
    """The FFN's second dense (the kind's ``ffn`` module on its input, at
    ``output/<kind>``) + dropout, then the end of the layer: the kind's ``output`` module
    (``output/slot``, which owns the residual and the output LayerNorm), or
    ``LN(h + inp)``, or, for an exported identity branch, ``LN(LN(h + inp) + h + inp)``."""

    config: Any
    spec: Any
    architecture: Architecture
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, intermediate, inp, deterministic: bool, gate=None, off=None,
                 key=None):
        """``key``: None, or the dropout's key."""
        c, arch, spec = self.config, self.architecture, self.spec
        init = self.is_initializing()
        if module := _point(arch, spec, "ffn", off, init):
            intermediate = module(spec, arch.options, arch, c, self.dtype, name=arch.adapter)(
                intermediate, gate, off)
        h = dense(c.hidden_size, c, self.dtype, "dense")(intermediate)
        h = Dropout(c.hidden_dropout_prob, (1,))(h, deterministic=deterministic, key=key)
        norm = layer_norm(c, self.dtype)
        if spec.adapter and "output" in arch.kind.modules:
            # The slot itself skips a statically dropped adapter (and creates its
            # parameters at init).
            slot = arch.kind.modules["output"](spec, arch.options, arch, c, self.dtype,
                                               name="slot")
            return slot(h, inp, norm, gate, off, deterministic)
        residual = h + inp
        if spec.identity_branch:
            return norm(norm(residual) + residual)
        return norm(residual)


class TransformerLayer(nn.Module):
    """One transformer layer with the adapter its ``spec`` describes.

    The signature is a scan body's: ``(x, bias, gate, off, key) -> (x, None)``. ``gate``:
    the layer's selection (None, or <float32>[batch, 2], see :mod:`aa_jax.selection`);
    ``off`` (AdapterDrop) removes this layer's adapter: None (keep it), a Python bool
    (static: a dropped adapter is not computed), or a traced <bool>[] (the per-step draw,
    and the scanned encoder's per-layer flag). ``key`` (training): the layer's dropout
    key; its three dropouts draw with keys split from it.
    """

    config: Any
    spec: LayerSpec
    architecture: Architecture
    dtype: Any = jnp.float32
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, bias, gate=None, off=None, key=None):
        c, spec, arch = self.config, self.spec, self.architecture
        gate = gate if spec.switch else None
        attention_keys = output_key = None
        if key is not None:
            probs, out, output_key = jax.random.split(key, 3)
            attention_keys = (probs, out)
        inp = Attention(c, self.dtype, spec, arch, name="attention")(
            x, bias, self.deterministic, gate, off, attention_keys)
        inter = Intermediate(c, self.dtype, name="intermediate")(inp)
        out = OutputBlock(c, spec, arch, self.dtype, name="output")(
            inter, inp, self.deterministic, gate, off, output_key)
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
    MiniLM training step (docs/speed.md)."""
    return jax.default_backend() != "cpu" if scan is None else bool(scan)


def layer_keys(dropout_key: jax.Array, gumbel_key: jax.Array, layers) -> jax.Array:
    """<key>[len(layers), 2]: layer ``i``'s dropout and switch keys, ``dropout_key`` and
    ``gumbel_key`` each folded with ``i``. They depend on the layer's index only, so the
    scanned and the unrolled encoder draw the same noise."""
    index = jnp.asarray(list(layers), jnp.uint32)
    fold = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    return jnp.stack([fold(dropout_key, index), fold(gumbel_key, index)], axis=1)


def attention_bias(attention_mask: jax.Array) -> jax.Array:
    """<float32>[batch, 1, 1, length]: 0 where ``attention_mask`` marks a real token, the
    smallest float32 elsewhere, added to the attention scores of every head and query."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                     jnp.finfo(jnp.float32).min).astype(jnp.float32)


def check_length(length: int, most: int) -> None:
    """Sequences longer than the ``most`` tokens a model's positions cover are refused."""
    if length > most:
        raise UserError(f"Sequences of length {length} exceed the model's {most} positions; "
                        f"use --max-length {most} or less.")


class Pooler(nn.Module):
    """tanh(dense(h_first)), the pretrained (and frozen) sentence representation of BERT,
    RoBERTa and MPNet (``pooler/dense``)."""

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(dense(self.config.hidden_size, self.config, self.dtype, "dense")(
            x[:, 0]))


def encoder_segments(model) -> list[tuple[int, int]]:
    """The stacked segments of a backbone's or classifier's encoder ([] unrolled)."""
    if not scans(model.scan):
        return []
    return segments(model.architecture or Architecture.none(model.config.num_hidden_layers))


def in_layout(params: dict, model) -> dict:
    """Per-layer ``params`` (e.g. ``load_pretrained(...).params``) in ``model``'s layout:
    ``model.apply({"params": in_layout(pre.params, model)}, ...)``."""
    return stack_layers(params, encoder_segments(model))


class Encoder(nn.Module):
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
    def __call__(self, x, bias, deterministic: bool, adapter_drop=None):
        c, arch = self.config, self.architecture
        keys = None
        if not deterministic and self.has_rng("dropout") and self.has_rng("gumbel"):
            keys = layer_keys(self.make_rng("dropout"), self.make_rng("gumbel"),
                              range(len(arch.layers)))
        # Every switched layer's gate, from one module (aa_jax.selection).
        gates = Selection(arch, name="selection")(
            x.shape[0], deterministic, None if keys is None else keys[:, 1])
        if not scans(self.scan):
            for i, spec in enumerate(arch.layers):
                off = layers_off(adapter_drop, i, i)
                x, _ = TransformerLayer(c, spec, arch, self.dtype, deterministic,
                                        name=f"layer_{i}")(
                    x, bias, None if gates is None else gates[i],
                    None if off is None else off[0], None if keys is None else keys[i, 0])
            return x
        for first, last in segments(arch):
            spec = arch.layers[first]
            # Each layer's gate, AdapterDrop flag and key are scanned with its parameters.
            off = layers_off(adapter_drop, first, last) if spec.adapter else None
            scanned = [(None, nn.broadcast) if v is None else (jnp.asarray(v), 0) for v in (
                gates[first:last + 1] if gates is not None and spec.switch else None, off,
                None if keys is None else keys[first:last + 1, 0])]
            layers = nn.scan(TransformerLayer, variable_axes={"params": 0, "intermediates": 0},
                             split_rngs={"params": True, "dropout": True, "gumbel": True},
                             in_axes=(nn.broadcast, *(axis for _, axis in scanned)),
                             length=last - first + 1)
            x, _ = layers(c, spec, arch, self.dtype, deterministic,
                          name=stack_name(first, last))(x, bias, *(v for v, _ in scanned))
        return x

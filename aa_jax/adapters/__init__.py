"""Adapters: the architecture that places them, and the kinds that can be placed.

- :mod:`~aa_jax.adapters.architecture`: :class:`Architecture` (per layer a
  :class:`LayerSpec`; the kind and its options; the selection of switched layers), plain
  data that round-trips through JSON. Every method of the paper is one such description
  (see :mod:`aa_jax.methods`).
- :mod:`~aa_jax.adapters.kind`: what a kind is, and the attachment points the backbone
  offers (:data:`~aa_jax.adapters.kind.POINTS`).
- one module per kind: :mod:`~aa_jax.adapters.seq_bn` (the paper's bottleneck adapter
  and the adaptable adapter layer), :mod:`~aa_jax.adapters.lora`,
  :mod:`~aa_jax.adapters.ia3`; :data:`KINDS` lists them.

Which layers' adapters run, and with what weight, is the selection's
(:mod:`aa_jax.selection`), not the kind's.
"""

from aa_jax.adapters.activations import ACTIVATIONS, FIXED_ACTIVATIONS
from aa_jax.adapters.architecture import (NO_ADAPTER, Architecture, LayerSpec,
                                          adapter_weight_count, validate_layer_indices)
from aa_jax.adapters.ia3 import IA3Options
from aa_jax.adapters.kind import POINTS, AdapterKind, KindModule
from aa_jax.adapters.lora import LoRA, LoraOptions
from aa_jax.adapters.registry import KINDS
from aa_jax.adapters.seq_bn import AdapterSlot, BottleneckAdapter, SeqBnOptions, bottleneck_size

__all__ = ["ACTIVATIONS", "FIXED_ACTIVATIONS", "NO_ADAPTER", "Architecture", "LayerSpec",
           "adapter_weight_count", "validate_layer_indices", "POINTS", "AdapterKind", "KindModule",
           "KINDS", "LoRA", "LoraOptions", "IA3Options", "AdapterSlot", "BottleneckAdapter",
           "SeqBnOptions", "bottleneck_size"]

"""The adapter kinds, by the name ``--adapter`` takes. A new kind is one module of this
package (its options, modules, attachment points, parameter rules and weight count; see
:mod:`aa_jax.adapters.kind`) and one line here."""

from __future__ import annotations

from aa_jax.adapters import ia3, lora, seq_bn
from aa_jax.adapters.kind import AdapterKind

KINDS: dict[str, AdapterKind] = {k.name: k for k in (seq_bn.KIND, lora.KIND, ia3.KIND)}

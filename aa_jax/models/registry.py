"""The model families aa_jax runs, keyed by their checkpoints' ``model_type``.

A new family is one module in ``aa_jax/models/`` that defines its ``FAMILY``
(:class:`aa_jax.models.family.Family`), one entry here, and its parity test.
"""

from __future__ import annotations

from typing import Any

from aa_jax.errors import UserError
from aa_jax.models import bert, mpnet, roberta
from aa_jax.models.family import Family

FAMILIES: dict[str, Family] = {f.model_type: f for f in (bert.FAMILY, roberta.FAMILY,
                                                         mpnet.FAMILY)}

# Preset names (``--model minilm``) -> family; a preset is a hub id, an installed
# folder, or both.
PRESETS: dict[str, Family] = {name: f for f in FAMILIES.values()
                              for name in (*f.local, *f.hub_ids)}


# Preset name -> Hugging Face hub id, for model cards and loading elsewhere.
HUB_IDS: dict[str, str] = {name: hub for f in FAMILIES.values()
                           for name, hub in f.hub_ids.items()}

# The family of files written before they recorded one (adapter folders, run configs).
DEFAULT_MODEL_TYPE = bert.FAMILY.model_type


def family_of(config_or_type: Any) -> Family:
    """The family of a config (its ``model_type``) or of a ``model_type`` string."""
    model_type = (config_or_type if isinstance(config_or_type, str)
                  else getattr(config_or_type, "model_type", None))
    if model_type not in FAMILIES:
        raise UserError(f"aa_jax does not run {model_type or 'this'} checkpoints; it runs "
                        f"model_type {', '.join(repr(t) for t in FAMILIES)}.")
    return FAMILIES[model_type]


def classifier_for(config: Any) -> type:
    """The sequence classifier class of a config's family."""
    return family_of(config).classifier


def backbone_prefix(params: dict) -> str:
    """The family prefix (``bert``, ``roberta``, ``mpnet``) at the top of a classifier's
    parameter tree."""
    found = [k for k in params if k in {f.prefix for f in FAMILIES.values()}]
    if len(found) != 1:
        raise ValueError(f"expected one backbone among the parameters' top-level names "
                         f"{sorted(params)}")
    return found[0]

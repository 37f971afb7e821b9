"""aa_jax: Adaptable Adapters (Moosavi et al., NAACL 2022) in JAX/Flax.

Adapters whose nonlinearity is a learnable rational function and whose layers are switched
on or off by learnable Gumbel-softmax switches, in a frozen BERT.
"""

import os

# transformers is used for tokenizers and configs only; its notice that PyTorch is absent
# is noise here.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from aa_jax.adapters import Architecture, LayerSpec
from aa_jax.errors import UserError
from aa_jax.models.bert import BertForSequenceClassification, BertModel
from aa_jax.models.loader import load_pretrained, with_backbone
from aa_jax.rational import Rational, fit_rational, init_coefficients
from aa_jax.switch import GumbelSwitch

__all__ = [
    "Architecture", "LayerSpec", "UserError", "BertForSequenceClassification", "BertModel",
    "load_pretrained", "with_backbone", "Rational", "fit_rational", "init_coefficients",
    "GumbelSwitch",
]

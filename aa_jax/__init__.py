"""aa_jax: Adaptable Adapters (Moosavi et al., NAACL 2022) in JAX/Flax.

Adapters whose nonlinearity is a learnable rational function and whose layers are switched
on or off by learnable Gumbel-softmax switches, in a frozen BERT.

The names below are imported on first use, so that ``import aa_jax.allocator`` (which the
command line runs before anything else) does not load JAX.
"""

import importlib
import importlib.metadata
import os

try:
    __version__ = importlib.metadata.version("aa-jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree without install
    __version__ = "0+unknown"

# transformers is used for tokenizers and configs only; its notice that PyTorch is absent
# is noise here.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

_EXPORTS = {
    "Architecture": "aa_jax.adapters", "LayerSpec": "aa_jax.adapters",
    "UserError": "aa_jax.errors",
    "BertForSequenceClassification": "aa_jax.models.bert", "BertModel": "aa_jax.models.bert",
    "RobertaForSequenceClassification": "aa_jax.models.roberta",
    "RobertaModel": "aa_jax.models.roberta",
    "MPNetForSequenceClassification": "aa_jax.models.mpnet", "MPNetModel": "aa_jax.models.mpnet",
    "SequenceClassifier": "aa_jax.models.head", "model_inputs": "aa_jax.models.head",
    "FAMILIES": "aa_jax.models.registry", "family_of": "aa_jax.models.registry",
    "classifier_for": "aa_jax.models.registry",
    "load_pretrained": "aa_jax.models.loader", "with_backbone": "aa_jax.models.loader",
    "Rational": "aa_jax.rational", "fit_rational": "aa_jax.rational",
    "init_coefficients": "aa_jax.rational", "GumbelSwitch": "aa_jax.switch",
    "KINDS": "aa_jax.adapters", "METHODS": "aa_jax.methods", "get_method": "aa_jax.methods",
    "TrainConfig": "aa_jax.config", "setup": "aa_jax.run_setup",
    "resolve_pooling": "aa_jax.run_setup", "make_optimizer": "aa_jax.step",
    "init_state": "aa_jax.step", "make_train_step": "aa_jax.step",
    "make_predict": "aa_jax.step", "partition": "aa_jax.params", "merge": "aa_jax.params",
    "in_layout": "aa_jax.models.layers", "random_pretrained": "aa_jax.models.loader",
    "save_adapters": "aa_jax.export", "load_adapters": "aa_jax.export",
    "Adapters": "aa_jax.export", "predict": "aa_jax.inference",
    # A training loop of your own (aa_jax.api; the tutorial is docs/tutorial.py).
    "build_classifier": "aa_jax.run_setup", "make_batch": "aa_jax.api",
    "switch_probabilities_of": "aa_jax.api", "rationals_of": "aa_jax.api",
    "init_params": "aa_jax.run_setup", "architecture_for": "aa_jax.methods",
    "learned_architecture": "aa_jax.learned", "read_learned": "aa_jax.learned",
    "param_groups": "aa_jax.params", "Task": "aa_jax.data.glue", "PROTOCOLS": "aa_jax.config",
    "train": "aa_jax.train", "evaluate_run": "aa_jax.train",
    "train_seeds": "aa_jax.multi_seed",
    "Selection": "aa_jax.selection", "SELECTORS": "aa_jax.selection",
    "AdapterKind": "aa_jax.adapters", "SeqBnOptions": "aa_jax.adapters",
    "LoraOptions": "aa_jax.adapters", "IA3Options": "aa_jax.adapters",
    "merge_adapters": "aa_jax.merging",
}
__all__ = list(_EXPORTS)


def __dir__() -> list[str]:
    """The public names with the module's own, so that ``dir(aa_jax)`` lists the API
    although it is imported on first use."""
    return sorted(set(__all__) | set(globals()))


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aa_jax' has no attribute {name!r}")

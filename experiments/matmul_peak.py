"""float32 matmul throughput of JAX (XLA:CPU) or PyTorch at an encoder's shapes.

Prints GFLOP/s (best of 5 after warm-up) of ``[m, k] @ [k, n]`` for the square 2048
product that ``aa-jax bench`` calls the peak, and for BERT-base's projections at batch
32 x 128 tokens (4096 rows): the feed-forward up and down projections and a square
768 projection. It uses whichever of jax or torch the interpreter has, so the two
libraries' kernels can be compared on one CPU:

    uv run python experiments/matmul_peak.py
    /tmp/peft/bin/python experiments/matmul_peak.py --torch
"""

from __future__ import annotations

import argparse
import json
import time

SHAPES = ((2048, 2048, 2048), (4096, 768, 3072), (4096, 3072, 768), (4096, 768, 768))


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="time torch instead of jax")
    args = parser.parse_args(argv)
    if args.torch:
        import torch

        def product(m, k, n):
            a, b = torch.ones(m, k), torch.ones(k, n)
            return lambda: a @ b
        system = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    else:
        import jax
        import jax.numpy as jnp

        matmul = jax.jit(lambda a, b: a @ b)

        def product(m, k, n):
            a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
            return lambda: matmul(a, b).block_until_ready()
        system = f"jax {jax.__version__} ({jax.default_backend()})"
    for m, k, n in SHAPES:
        seconds = best_seconds(product(m, k, n))
        print(json.dumps({"system": system, "shape": [m, k, n],
                          "gflops": round(2 * m * k * n / seconds / 1e9, 1)}))


if __name__ == "__main__":
    main()

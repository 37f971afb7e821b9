"""Speed of the jitted train step and of inference, per method, on this machine's device.

    uv run python experiments/benchmark.py --model minilm --batch-size 32 --length 128

Prints, for each method, the median time of one training step and of one inference batch
(after compilation), examples per second, and each method's time relative to the Pfeiffer
baseline measured in the same run. Absolute times depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from aa_jax.methods import architecture_for
from aa_jax.models.bert import BertForSequenceClassification
from aa_jax.models.loader import load_pretrained
from aa_jax.train import TrainConfig, init_params, init_state, make_optimizer, make_predict, \
    make_train_step


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="baseline,aa,rational_only,switch_only,last_n")
    args = parser.parse_args(argv)

    pre = load_pretrained(args.model, tokenizer=False)
    depth = pre.config.num_hidden_layers
    b, n = args.batch_size, args.length
    batch = {"input_ids": jnp.full((b, n), 1000, jnp.int32),
             "token_type_ids": jnp.zeros((b, n), jnp.int32),
             "attention_mask": jnp.ones((b, n), jnp.int32),
             "labels": jnp.zeros((b,), jnp.int32), "weights": jnp.ones((b,), jnp.float32)}
    print(f"device {jax.devices()[0].device_kind}; model {args.model} ({depth} layers, "
          f"d={pre.config.hidden_size}); batch {b} x {n} tokens; median of {args.repeats}")
    print(f"{'method':14s} {'train step s':>12s} {'ex/s':>8s} {'x base':>7s} "
          f"{'predict s':>10s} {'ex/s':>8s} {'x base':>7s}")
    base = None
    for method in args.methods.split(","):
        arch = architecture_for(method, depth, last_n=(depth + 1) // 2)
        model = BertForSequenceClassification(pre.config, 2, arch)
        trainable, frozen = init_params(model, jax.random.key(0), pre.params)
        tx = make_optimizer(TrainConfig(), 1000, trainable)
        step = make_train_step(model, tx, regression=False)
        predict = make_predict(model, regression=False)
        state = [init_state(trainable, tx)]
        key = jax.random.key(1)

        def train_once():
            state[0], metrics = step(state[0], frozen, batch, key)
            return metrics["loss"]

        t_train = median_seconds(train_once, args.repeats)
        t_pred = median_seconds(lambda: predict(state[0].trainable, frozen, batch),
                                args.repeats)
        base = base or (t_train, t_pred)
        print(f"{method:14s} {t_train:12.3f} {b / t_train:8.1f} {t_train / base[0]:7.2f} "
              f"{t_pred:10.3f} {b / t_pred:8.1f} {t_pred / base[1]:7.2f}", flush=True)


if __name__ == "__main__":
    main()

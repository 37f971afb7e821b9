"""Compile times of an older aa_jax checkout, measured like ``aa-jax bench --compile``.

Releases before the scanned encoder have no ``bench --compile``; this script times the
same things with their API, so that the two can be compared side by side on one machine:

    git worktree add /tmp/before <commit>
    AA_JAX_CACHE_DIR=off PYTHONPATH=/tmp/before .venv/bin/python \\
        experiments/compile_before.py --model bert-large --methods baseline,aa
    AA_JAX_CACHE_DIR=off uv run aa-jax bench --compile --random-weights --model bert-large \\
        --methods baseline,aa --json

The backbone is abstract (shapes only: lowering and compiling need no values), so the
older code's slow jitted init of random weights is not part of its figures. Prints one
JSON object per method with ``lower_s``, ``compile_s``, ``predict_lower_s`` and
``predict_compile_s``.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bert-large")
    parser.add_argument("--methods", default="baseline,aa")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()

    import aa_jax
    from aa_jax.methods import architecture_for
    from aa_jax.models.bert import BertForSequenceClassification
    from aa_jax.models.loader import load_config
    from aa_jax.train import (TrainConfig, init_state, make_optimizer, make_predict,
                              make_train_step, partition)

    config = load_config(args.model)
    depth = config.num_hidden_layers
    b, n = args.batch_size, args.length
    batch = {"input_ids": jnp.full((b, n), 1000, jnp.int32),
             "token_type_ids": jnp.zeros((b, n), jnp.int32),
             "attention_mask": jnp.ones((b, n), jnp.int32),
             "labels": jnp.zeros((b,), jnp.int32), "weights": jnp.ones((b,), jnp.float32)}
    for method in args.methods.split(","):
        arch = architecture_for(method, depth, last_n=depth - depth // 2,
                                selected_layers=list(range(depth // 2, depth)))
        model = BertForSequenceClassification(config, 2, arch, pooling="pooler")
        shapes = jax.eval_shape(lambda k: model.init(k, batch["input_ids"][:1, :8]),
                                jax.random.key(0))["params"]
        trainable, frozen = partition(shapes)
        tx = make_optimizer(TrainConfig(), 1000, trainable)
        state = jax.eval_shape(lambda t: init_state(t, tx), trainable)
        times = {}
        for name, fn, fargs in (
                ("", make_train_step(model, tx, False), (state, frozen, batch,
                                                          jax.random.key(1))),
                ("predict_", make_predict(model, False), (trainable, frozen, batch))):
            t = time.perf_counter()
            lowered = fn.lower(*fargs)
            times[f"{name}lower_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            lowered.compile()
            times[f"{name}compile_s"] = round(time.perf_counter() - t, 2)
        print(json.dumps({"method": method, "model": args.model, "code": aa_jax.__file__,
                          **times}), flush=True)


if __name__ == "__main__":
    main()

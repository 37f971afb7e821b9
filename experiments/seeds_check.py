"""Seeds together against seeds one by one: same results, and how much faster.

    uv run python experiments/seeds_check.py --task rte --method aa --train-size 100 \\
        --glue-dir ../shared/glue --out experiments/results/seeds_check --epochs 20

Trains the paper's five seeds (42, 92, 111, 245, 651) of one task / method / size twice
in the same process: one after another with ``aa_jax.train.train`` into OUT/sequential,
and as one vmapped program with ``aa_jax.multi_seed.train_seeds`` into OUT/together. Both are
timed end to end (data, setup, compilation, training, evaluation, files) after a
warm-up of one epoch of each kind, with the persistent compilation cache on as the
command line has it. Prints per seed: the difference of the first epoch's mean training
loss, the final dev and test scores of both runs, whether they selected the same layers,
and how many of the seed's steps were padded to a wider bucket (at those steps dropout
draws other masks than in the sequential run; see ``aa_jax.multi_seed``); then the
end-to-end speedup. The numbers also go to OUT/seeds_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from aa_jax.cache import enable_compilation_cache
from aa_jax.data import pipeline
from aa_jax.models.loader import load_pretrained
from aa_jax.multi_seed import train_seeds
from aa_jax.config import PROTOCOLS, TrainConfig
from aa_jax.run_setup import load_data
from aa_jax.train import shuffle_seed, train

SEEDS = (42, 92, 111, 245, 651)


def padded_steps(configs: list[TrainConfig], tokenizer) -> tuple[list[int], int]:
    """For each seed, how many of its training steps train_seeds widens; and the steps."""
    data = []
    for c in configs:
        _, splits = load_data(c)
        data.append((pipeline.encode(tokenizer, splits["train"].texts, c.max_length),
                     splits["train"].labels))
    counts, steps = [0] * len(configs), 0
    for epoch in range(1, configs[0].epochs + 1):
        streams = [pipeline.batches(enc, labels, c.batch_size,
                                    shuffle_seed=shuffle_seed(c.seed, epoch))
                   for (enc, labels), c in zip(data, configs)]
        for group in zip(*streams):
            widths = [b["input_ids"].shape[1] for b in group]
            counts = [n + (w < max(widths)) for n, w in zip(counts, widths)]
            steps += 1
    return counts, steps


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _scores(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="rte")
    parser.add_argument("--method", default="aa")
    parser.add_argument("--train-size", type=int, default=100)
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--out", required=True, help="a new folder for both sets of runs")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="released",
                        help="the learning rates (see aa-jax train --protocol)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"seeds_check: {out} is not empty; finished runs would be returned, not timed. "
              f"Pass a new --out.", file=sys.stderr)
        return 2
    enable_compilation_cache()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = TrainConfig(task=args.task, method=args.method, model=args.model,
                       train_size=args.train_size, epochs=args.epochs,
                       glue_dir=args.glue_dir, **PROTOCOLS[args.protocol])
    configs = [dataclasses.replace(base, seed=seed) for seed in seeds]
    pretrained = load_pretrained(args.model)

    # Warm-up: imports, data files, tokenizer and XLA start-up are paid here, not below.
    with tempfile.TemporaryDirectory() as tmp:
        warm = [dataclasses.replace(c, epochs=1) for c in configs]
        train(warm[0], Path(tmp) / "one", False, pretrained)
        train_seeds(warm, [Path(tmp) / f"together-{c.seed}" for c in warm], False, pretrained)

    seq_dirs = [out / "sequential" / f"seed-{s}" for s in seeds]
    tog_dirs = [out / "together" / f"seed-{s}" for s in seeds]
    start = time.perf_counter()
    sequential = [train(c, d, args.progress, pretrained) for c, d in zip(configs, seq_dirs)]
    seq_seconds = time.perf_counter() - start
    start = time.perf_counter()
    together = train_seeds(configs, tog_dirs, args.progress, pretrained)
    tog_seconds = time.perf_counter() - start
    padded, steps = padded_steps(configs, pretrained.tokenizer)

    rows = []
    for seed, s, t, s_dir, t_dir, n_padded in zip(seeds, sequential, together, seq_dirs,
                                                  tog_dirs, padded):
        rows.append({
            "seed": seed,
            "first_epoch_loss": {"sequential": _history(s_dir)[0]["loss"],
                                 "together": _history(t_dir)[0]["loss"]},
            "dev": {"sequential": s["dev"], "together": t["dev"]},
            "test": {"sequential": s["test"], "together": t["test"]},
            "best_epoch": {"sequential": s["best_epoch"], "together": t["best_epoch"]},
            "same_layers": s["selected_layers"] == t["selected_layers"],
            "padded_steps": n_padded, "steps": steps,
        })
    print(f"{args.task} {args.method} {args.train_size} examples, {args.epochs} epochs, "
          f"model {args.model}, seeds {seeds} (each pair: sequential | together)")
    for r in rows:
        loss = r["first_epoch_loss"]
        print(f"seed {r['seed']}: first-epoch loss diff "
              f"{abs(loss['together'] - loss['sequential']):.2e}; "
              f"dev {_scores(r['dev']['sequential'])} | {_scores(r['dev']['together'])}; "
              f"test {_scores(r['test']['sequential'])} | {_scores(r['test']['together'])}; "
              f"best epoch {r['best_epoch']['sequential']} | {r['best_epoch']['together']}; "
              f"same layers: {'yes' if r['same_layers'] else 'no'}; "
              f"padded steps {r['padded_steps']} of {r['steps']}")
    print(f"end to end: sequential {seq_seconds:.1f} s, together {tog_seconds:.1f} s, "
          f"speedup {seq_seconds / tog_seconds:.2f}x")
    summary = {"task": args.task, "method": args.method, "train_size": args.train_size,
               "epochs": args.epochs, "model": args.model, "seeds": seeds, "per_seed": rows,
               "sequential_seconds": round(seq_seconds, 2),
               "together_seconds": round(tog_seconds, 2),
               "speedup": round(seq_seconds / tog_seconds, 3)}
    (out / "seeds_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""aa_jax against its PyTorch peers on the same work, alternating, in one sitting.

Two pairs, each timed as ``aa-jax bench`` and a peer script time them (batch 32 x 128, one
training step and one inference batch, medians of ``--repeats``, defaults otherwise):

- ``mpnet-lora``: all-mpnet-base-v2 (real weights) with LoRA on the query and value
  projections: ``aa-jax bench --model mpnet --methods baseline --adapter lora`` against
  Hugging Face's ``MPNetForSequenceClassification`` with ``peft`` (``peer_peft.py``);
- ``bert-base-seq_bn``: BERT-base's published shape with random weights and Pfeiffer
  (``seq_bn``) adapters: ``aa-jax bench --model bert-base --random-weights --methods
  baseline`` against AdapterHub's ``adapters`` (``peer_adapterhub.py --model bert-base``).

Each round runs every pair, aa_jax first in even rounds and the peer first in odd ones,
each system in a process of its own with nothing else running. Every record is appended to
``--out`` (JSON lines, with the round, the CPU model and the thread count) as it comes;
the summary prints each pair's ratios per round (peer seconds / aa_jax seconds: above 1,
aa_jax is faster). The peers need virtualenvs of their own with torch (see the scripts):

    uv run python experiments/bench_peers.py --peft-python /tmp/peft/bin/python \\
        --adapterhub-python /tmp/adapterhub/bin/python --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _json_lines(command: list[str]) -> list[dict]:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def pairs(args, mpnet_folder: str) -> dict[str, tuple[list[str], list[str]]]:
    common = ["--batch-size", str(args.batch_size), "--length", str(args.length),
              "--repeats", str(args.repeats)]
    # The console command, as users run it: it restarts itself with its allocator.
    aa = [sys.executable, "-c", "from aa_jax.cli import entry; entry()", "bench", "--json",
          "--methods", "baseline", *common]
    return {
        "mpnet-lora": ([*aa, "--model", "mpnet", "--adapter", "lora"],
                       [args.peft_python, str(HERE / "peer_peft.py"), mpnet_folder, *common]),
        "bert-base-seq_bn": ([*aa, "--model", "bert-base", "--random-weights"],
                             [args.adapterhub_python, str(HERE / "peer_adapterhub.py"),
                              "--model", "bert-base", *common]),
    }


def summary(records: list[dict]) -> str:
    lines = [f"{'pair':18s} {'round':>5s} {'aa_jax train s':>14s} {'peer train s':>12s} "
             f"{'train x':>7s} {'aa_jax pred s':>13s} {'peer pred s':>11s} {'pred x':>6s} "
             f"{'peak frac':>9s}"]
    by = {}
    for r in records:
        by.setdefault((r["pair"], r["round"]), {})[r["side"]] = r
    for (pair, rnd), sides in sorted(by.items()):
        if set(sides) != {"aa_jax", "peer"}:
            continue
        a, p = sides["aa_jax"], sides["peer"]
        lines.append(f"{pair:18s} {rnd:5d} {a['train_step_s']:14.3f} {p['train_step_s']:12.3f} "
                     f"{p['train_step_s'] / a['train_step_s']:7.2f} {a['predict_s']:13.3f} "
                     f"{p['predict_s']:11.3f} {p['predict_s'] / a['predict_s']:6.2f} "
                     f"{a.get('peak_fraction') or 0:9.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peft-python", required=True)
    parser.add_argument("--adapterhub-python", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--pairs", default="mpnet-lora,bert-base-seq_bn")
    parser.add_argument("--out", type=Path,
                        default=HERE / "results" / "bench_peers" / "records.jsonl")
    args = parser.parse_args(argv)

    from aa_jax.models.mpnet import checkpoint_path

    mpnet_folder = str(checkpoint_path())
    chosen = {k: v for k, v in pairs(args, mpnet_folder).items()
              if k in args.pairs.split(",")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cpu, threads = cpu_model(), os.cpu_count()
    records = []
    for rnd in range(args.rounds):
        for pair, (ours, peer) in chosen.items():
            order = [("aa_jax", ours), ("peer", peer)]
            for side, command in order if rnd % 2 == 0 else order[::-1]:
                for record in _json_lines(command):
                    record.update(pair=pair, side=side, round=rnd, cpu=cpu, cpus=threads)
                    records.append(record)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(f"{pair} round {rnd} {side}: train {record['train_step_s']} s, "
                          f"predict {record['predict_s']} s", flush=True)
    print(f"\n{cpu}, {threads} CPUs; ratios are peer seconds / aa_jax seconds")
    print(summary(records))


if __name__ == "__main__":
    main()

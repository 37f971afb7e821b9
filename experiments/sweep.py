"""Runs a sweep: a base config plus a grid of overrides, one run directory per point.

    uv run python experiments/sweep.py experiments/sweeps/methods_100.json --glue-dir ../shared/glue

Runs execute one after another in this process and share the loaded backbone, the
allocator of ``aa-jax`` (mimalloc) and XLA's persistent compilation cache. A finished
run (a complete result.json) is skipped, and an interrupted run resumes from its last
checkpoint, so the same command can be restarted any number of times. Results go to
``experiments/results/<sweep name>/<task>-<method>-<size>-<seed>/``. Checkpoints are kept
out of git; config, metrics, architecture and result files are meant to be committed.

``per_method`` adds overrides for one method. Two values refer to other runs of the same
task, size and seed in the sweep, which must come earlier in the method list:
``"@aa"`` is the AA run's directory (for ``architecture``), and ``"@aa_left_out"`` is
the number of layers that AA run left out (AdapterDrop's ``drop_first``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from aa_jax.checkpoint import is_complete, read_json
from aa_jax.errors import UserError
from aa_jax.models.loader import load_pretrained
from aa_jax.train import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"  # run from the repository root


def run_name(c: TrainConfig) -> str:
    size = "full" if c.train_size is None else c.train_size
    dtype = "" if c.dtype == "float32" else f"-{c.dtype}"
    lr = "" if c.learning_rate == TrainConfig.learning_rate else f"-lr{c.learning_rate:g}"
    return f"{c.task}-{c.method}-{size}-{c.seed}{lr}{dtype}"


def expand(spec: dict, glue_dir: str | None) -> list[dict]:
    grid = spec.get("grid", {})
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = {**spec.get("base", {}), **dict(zip(keys, values))}
        point.update(spec.get("per_method", {}).get(point.get("method"), {}))
        if glue_dir:
            point["glue_dir"] = glue_dir
        points.append(point)
    return points


def resolve_refs(point: dict, out_root: Path) -> dict:
    point = dict(point)
    aa_dir = out_root / run_name(TrainConfig(**{**point, "method": "aa",
                                                "architecture": None, "drop_first": 0}))
    for key, value in point.items():
        if value == "@aa":
            # Relative to where the sweep runs, so that configs name no machine's paths.
            point[key] = os.path.relpath(aa_dir)
        elif value == "@aa_left_out":
            if not is_complete(aa_dir):
                raise UserError(f"{aa_dir} has not finished; list 'aa' before the methods "
                                f"that refer to it.")
            learned = read_json(aa_dir / "architecture.json", "learned architecture")
            point[key] = learned["depth"] - len(learned["selected_layers"])
    return point


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep JSON file (see experiments/sweeps/)")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--out", default=None, help="default experiments/results/<name>")
    parser.add_argument("--epochs", type=int, default=None, help="override for quick checks")
    args = parser.parse_args(argv)

    spec = json.loads(Path(args.sweep).read_text())
    out_root = Path(args.out) if args.out else RESULTS / Path(args.sweep).stem
    backbones = {}
    points = expand(spec, args.glue_dir)
    for n, point in enumerate(points, 1):
        if args.epochs:
            point["epochs"] = args.epochs
        try:
            config = TrainConfig(**resolve_refs(point, out_root))
            config.validate()
            run_dir = out_root / run_name(config)
            if is_complete(run_dir):
                print(f"[{n}/{len(points)}] {run_dir.name}: done")
                continue
            print(f"[{n}/{len(points)}] {run_dir.name}: training", flush=True)
            if config.model not in backbones:
                backbones[config.model] = load_pretrained(config.model)
            result = train(config, run_dir, progress=False, pretrained=backbones[config.model])
        except UserError as e:
            print(f"[{n}/{len(points)}] error: {e}", file=sys.stderr)
            return 2
        test = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
        print(f"    test {test}; layers {result['selected_layers']}; "
              f"{result['train_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    from aa_jax.allocator import reexec_with_mimalloc
    from aa_jax.cache import enable_compilation_cache

    reexec_with_mimalloc(sys.argv)
    enable_compilation_cache()
    sys.exit(main())

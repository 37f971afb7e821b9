"""Records the distribution of the inputs each layer's rational sees, for Figure 3.

    uv run python experiments/rational_inputs.py runs/sweeps/paper/sst2-aa-100-42-lr0.003 \
        --publish experiments/results/paper

For each run directory (a finished run with its checkpoints), runs the best epoch's model
over the run's own training examples and histograms, per layer, the values that enter the
rational activation (the adapter's down-projection at every real token). An AA run is
measured as it predicts: its switches resolved (the static model of ``aa-jax export``), so
the layers whose switch chose the identity have no adapter and no histogram. Writes
``rational_inputs.json`` into the run directory, and into ``<publish>/<run name>/`` too
when given, where ``experiments/aggregate.py`` draws it under the learned functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from aa_jax.checkpoint import write_json_atomic
from aa_jax.data import pipeline
from aa_jax.export import static_architecture, static_params
from aa_jax.learned import read_learned
from aa_jax.models.head import model_inputs
from aa_jax.run_setup import load_run
from aa_jax.params import layer_span, merge, unstack_layers

EDGES = np.linspace(-4.0, 4.0, 161)  # the figure shows [-3, 3]; the rest is counted apart


def rational_inputs(run_dir: Path, pretrained=None) -> dict:
    exp, params, _ = load_run(run_dir, pretrained)
    arch = exp.architecture
    if arch.switched_layers:
        selected = sorted(read_learned(run_dir)["selected_layers"])
        params = static_params(params, arch, selected)
        arch = static_architecture(arch, selected)
    # Unrolled, so that each layer's intermediates come under its own name.
    model = exp.pretrained.family.classifier(exp.pretrained.config, exp.task.num_labels,
                                             arch, pooling=exp.pooling, scan=False)
    params = merge(unstack_layers(params), unstack_layers(exp.frozen))

    # The weights are arguments, not constants: as constants every run compiled a program
    # of its own (about 80 MB for MiniLM).
    @jax.jit
    def downs(params, batch):
        _, state = model.apply({"params": params}, **model_inputs(model, batch),
                               deterministic=True,
                               capture_intermediates=lambda m, _: m.name == "down")
        found = {}
        flat = jax.tree_util.tree_flatten_with_path(state.get("intermediates", {}))[0]
        for path, value in flat:
            keys = [str(k.key) for k in path if hasattr(k, "key")]
            # Only the down projection's output: the rationals sow their input's range
            # into the same collection (aa_jax.diagnostics).
            if keys[-2:] != ["down", "__call__"]:
                continue
            layer = next(span[0][0] for k in keys if (span := layer_span(k)))
            found[layer] = value
        return found

    counts: dict[int, np.ndarray] = {}
    outside: dict[int, list[int]] = {}
    moments: dict[int, list[float]] = {}
    for batch in pipeline.batches(exp.encoded["train"], exp.labels["train"],
                                  exp.config.batch_size):
        mask = np.asarray(batch["attention_mask"], bool) & (
            np.asarray(batch["weights"])[:, None] != 0)
        for layer, z in downs(params, batch).items():
            values = np.asarray(z, np.float64)[mask].reshape(-1)
            counts[layer] = counts.get(layer, 0) + np.histogram(values, EDGES)[0]
            below, above = int((values < EDGES[0]).sum()), int((values > EDGES[-1]).sum())
            o = outside.setdefault(layer, [0, 0])
            o[0] += below
            o[1] += above
            m = moments.setdefault(layer, [0.0, 0.0, 0.0])
            m[0] += values.size
            m[1] += values.sum()
            m[2] += (values ** 2).sum()
    layers = {}
    for layer in sorted(counts):
        n, s, ss = moments[layer]
        mean = s / n
        layers[str(layer)] = {
            "counts": [round(float(c) / n, 6) for c in counts[layer]],
            "below": round(outside[layer][0] / n, 6), "above": round(outside[layer][1] / n, 6),
            "mean": round(mean, 6), "std": round(float(np.sqrt(max(ss / n - mean ** 2, 0))), 6),
            "values": int(n)}
    return {"split": "train", "edges": [round(float(e), 6) for e in EDGES],
            "note": "fractions of the rational's input values (every bottleneck unit at every "
                    "real token of the run's training examples) per bin; below/above: "
                    "outside the edges", "layers": layers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories with checkpoints")
    parser.add_argument("--publish", default=None,
                        help="a results folder to copy rational_inputs.json into")
    args = parser.parse_args(argv)
    from aa_jax.models.loader import load_pretrained

    backbones = {}
    for run in map(Path, args.runs):
        model = json.loads((run / "config.json").read_text())["model"]
        if model not in backbones:
            backbones[model] = load_pretrained(model)
        record = rational_inputs(run, backbones[model])
        write_json_atomic(run / "rational_inputs.json", record)
        if args.publish:
            target = Path(args.publish) / run.name
            if (target / "result.json").is_file():
                write_json_atomic(target / "rational_inputs.json", record)
        print(f"{run}: layers {sorted(int(k) for k in record['layers'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

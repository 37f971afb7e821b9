"""Figure 3 from result folders: switch probabilities over training and learned rationals.

Both read only the committed files of finished runs: ``metrics.jsonl`` (the switches'
p(adapter) after every epoch), ``architecture.json`` (each layer's rational coefficients)
and, where present, ``rational_inputs.json`` (a histogram of the inputs each layer's
rational saw, written by ``experiments/rational_inputs.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PNG_METADATA = {"Software": None}  # no version string, so that the files are reproducible


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, metadata=PNG_METADATA)
    tmp.replace(path)
    _pyplot().close(fig)
    return path


def _by_task(runs: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for run in runs:
        task = json.loads((run / "result.json").read_text())["task"]
        out.setdefault(task, []).append(run)
    return out


def switch_history(runs: list[Path]) -> tuple[np.ndarray, list[int]]:
    """A task's seeds together: each layer's p(adapter) after every epoch, the mean over
    seeds (``[layers, epochs]``, up to the epochs every seed finished), and for each layer
    how many seeds' learned architectures selected it."""
    curves, selected = [], []
    for run in runs:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                 if x.strip()]
        layers = sorted(lines[0].get("switch_probs", {}), key=int)
        curves.append([[r["switch_probs"][k] for r in lines] for k in layers])
        selected += json.loads((run / "architecture.json").read_text())["selected_layers"]
    epochs = min(len(c[0]) for c in curves)
    mean = np.mean([np.asarray(c)[:, :epochs] for c in curves], axis=0)
    return mean, [selected.count(layer) for layer in range(len(mean))]


def switches_figure(runs: list[Path], path: Path) -> Path:
    """One panel per task: each layer's p(adapter) after every epoch as a heat map, the
    mean over seeds (a switch that commits shows as 0 or 1 in every seed, so a mean
    between says how many seeds kept the layer); beside each layer, how many seeds
    selected it."""
    plt = _pyplot()
    tasks = _by_task(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 0.8, 2.9),
                             squeeze=False, layout="constrained")
    image = None
    for ax, (task, task_runs) in zip(axes[0], tasks.items()):
        mean, selected = switch_history(task_runs)
        layers, epochs = mean.shape
        image = ax.imshow(mean, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          extent=(0.5, epochs + 0.5, -0.5, layers - 0.5),
                          interpolation="nearest")
        ax.set_yticks(range(layers))
        ax.set_yticklabels([f"{k} ({n}/{len(task_runs)})" for k, n in enumerate(selected)],
                           fontsize=7)
        ax.set_title(f"{task} ({len(task_runs)} seeds)", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("layer (seeds that kept it)")
    fig.colorbar(image, ax=axes[0].tolist(), label="p(adapter), mean over seeds",
                 fraction=0.05, pad=0.02)
    return _save(fig, path)


def rationals_figure(runs: list[Path], path: Path) -> Path:
    """Rows are tasks, columns layers: the learned R(x) of every seed (the first seed bold;
    green where that seed's switch selected the layer), ReLU dotted, and in grey the
    distribution of the inputs the rational saw, where recorded."""
    from aa_jax.rational import rational

    plt = _pyplot()
    tasks = _by_task(runs)
    archs = {t: [json.loads((r / "architecture.json").read_text()) for r in rs]
             for t, rs in tasks.items()}
    depth = max(a["depth"] for arch in archs.values() for a in arch)
    fig, axes = plt.subplots(len(tasks), depth, figsize=(1.9 * depth, 1.7 * len(tasks)),
                             squeeze=False, sharex=True)
    x = np.linspace(-3, 3, 241, dtype=np.float32)
    for r, (task, task_runs) in enumerate(tasks.items()):
        row = axes[r]
        inputs = [_inputs(r) for r in task_runs]
        for n, (arch, hist) in enumerate(zip(archs[task], inputs)):
            version = arch["architecture"].get("rational_version", "A")
            for entry in arch["layers"]:
                if "rational" not in entry:
                    continue
                ax = row[entry["layer"]]
                y = np.asarray(rational(x, np.asarray(entry["rational"]["numerator"], np.float32),
                                        np.asarray(entry["rational"]["denominator"], np.float32),
                                        version))
                ax.plot(x, y, lw=1.4 if n == 0 else 0.6, alpha=1 if n == 0 else 0.5,
                        color="tab:green" if entry.get("selected") else "tab:gray")
                if n == 0 and hist and str(entry["layer"]) in hist["layers"]:
                    h = hist["layers"][str(entry["layer"])]
                    twin = ax.twinx()
                    edges = np.asarray(hist["edges"])
                    twin.stairs(h["counts"], edges, fill=True, color="0.85", zorder=0)
                    twin.set_yticks([])
                    ax.set_zorder(twin.get_zorder() + 1)
                    ax.patch.set_visible(False)
        for layer, ax in enumerate(row):
            ax.plot(x, np.maximum(x, 0), color="k", lw=0.5, ls=":")
            ax.set_ylim(-3, 4)
            ax.set_xlim(-3, 3)
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"layer {layer}", fontsize=8)
        row[0].set_ylabel(task, fontsize=9)
    fig.legend(handles=_rationals_legend(), loc="lower center", ncol=5, fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def _rationals_legend() -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Line2D([], [], color="tab:green", lw=1.4, label="first seed, layer kept"),
            Line2D([], [], color="tab:gray", lw=1.4, label="first seed, layer left out"),
            Line2D([], [], color="tab:green", lw=0.6, alpha=0.5,
                   label="other seeds (same colours)"),
            Line2D([], [], color="k", lw=0.5, ls=":", label="ReLU"),
            Patch(color="0.85", label="inputs it saw (first seed, kept layers)")]


def _inputs(run: Path) -> dict | None:
    f = run / "rational_inputs.json"
    return json.loads(f.read_text()) if f.is_file() else None

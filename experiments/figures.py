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


def switches_figure(runs: list[Path], path: Path) -> Path:
    """One panel per task: each layer's p(adapter) after every epoch, mean over seeds (the
    shaded band is their range); the dashed line is the selection threshold."""
    plt = _pyplot()
    tasks = _by_task(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 2.8), squeeze=False,
                             sharey=True)
    for ax, (task, task_runs) in zip(axes[0], tasks.items()):
        curves = []
        for run in task_runs:
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                     if x.strip()]
            curves.append({int(k): [r["switch_probs"][k] for r in lines]
                           for k in lines[0].get("switch_probs", {})})
        epochs = np.arange(1, min(len(next(iter(c.values()))) for c in curves) + 1)
        for layer in sorted(curves[0]):
            ys = np.array([c[layer][:len(epochs)] for c in curves])
            color = plt.cm.viridis(layer / max(1, len(curves[0]) - 1))
            ax.plot(epochs, ys.mean(0), color=color, label=f"layer {layer}")
            ax.fill_between(epochs, ys.min(0), ys.max(0), color=color, alpha=0.15, lw=0)
        ax.axhline(0.5, color="k", lw=0.5, ls="--")
        ax.set_title(f"{task} ({len(task_runs)} seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("p(adapter)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
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
    fig.tight_layout()
    return _save(fig, path)


def _inputs(run: Path) -> dict | None:
    f = run / "rational_inputs.json"
    return json.loads(f.read_text()) if f.is_file() else None

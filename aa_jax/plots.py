"""Pictures of a learned architecture: switch probabilities and each layer's rational."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aa_jax.errors import StorageError, UserError, storage_errno
from aa_jax.switch import ADAPTER


def plot_architecture(learned: dict, path: str | Path) -> Path:
    """Writes a PNG: p(adapter) per layer on top, each layer's learned R(x) on [-3, 3] below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aa_jax.rational import rational

    layers = learned.get("layers", [])
    version = (learned.get("architecture") or {}).get("rational_version", "A")
    rationals = [e for e in layers if "rational" in e]
    cols = min(6, max(1, len(rationals)))
    rows = 1 + (len(rationals) + cols - 1) // cols if rationals else 1
    fig = plt.figure(figsize=(2.6 * cols + 1, 2.4 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols)

    ax = fig.add_subplot(grid[0, :])
    idx = [e["layer"] for e in layers]
    p = [e["switch_probs"][ADAPTER] if "switch_probs" in e else (1.0 if e["adapter"] else 0.0)
         for e in layers]
    colors = ["tab:green" if e["selected"] else "tab:gray" for e in layers]
    ax.bar(idx, p, color=colors)
    ax.axhline(0.5, color="k", lw=0.5, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xticks(idx)
    ax.set_xlabel("layer")
    ax.set_ylabel("p(adapter)")
    src = learned.get("source") or {}
    ax.set_title(f"{src.get('task')} / {src.get('train_size')} ex. / seed {src.get('seed')}: "
                 f"selected {learned['selected_layers']}", fontsize=9)

    x = np.linspace(-3, 3, 301, dtype=np.float32)
    for n, e in enumerate(rationals):
        a = fig.add_subplot(grid[1 + n // cols, n % cols])
        y = np.asarray(rational(x, np.asarray(e["rational"]["numerator"], np.float32),
                                np.asarray(e["rational"]["denominator"], np.float32),
                                version))
        a.plot(x, y, color="tab:green" if e["selected"] else "tab:gray")
        a.plot(x, np.maximum(x, 0), color="k", lw=0.5, ls=":")
        a.set_title(f"layer {e['layer']}", fontsize=8)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    except OSError as e:
        try:  # the cleanup must not hide why the picture could not be written
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        code = storage_errno(e)
        reason = os.strerror(code) if code is not None else (e.strerror or str(e))
        message = (f"Could not write the picture {path} ({reason}); pass --png with a path "
                   f"on a writable disk that has room.")
        raise (StorageError(message, code) if code is not None else UserError(message)) \
            from None
    finally:
        plt.close(fig)
    return path

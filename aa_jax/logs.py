"""TensorBoard event files of a run (``--log-dir``), written with tensorboardX (no
TensorFlow). ``metrics.jsonl`` in the run directory stays the record; the events are for
watching runs in TensorBoard.

Per step: ``train/loss``, ``train/grad_norm`` (before clipping) and ``lr/<group>`` (the
learning rate the step used, from the schedule of :func:`aa_jax.step.make_optimizer`:
its warm-up, then its linear decay).
Per epoch, at the epoch's last step: ``dev/<metric>`` and ``switch/layer_<i>`` (each
switch's probability of the adapter). The steps' values are written at the end of each
epoch (the step losses are fetched from the device once per epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


class EventLog:
    """The event file of one run: ``log_dir/name``."""

    def __init__(self, log_dir: str | Path, name: str, config, total_steps: int,
                 learning_rates: Mapping[str, str], resumed_step: int = 0):
        """``resumed_step``: the step of the checkpoint a resumed run starts from; what an
        earlier process logged after it is discarded by TensorBoard (``purge_step``), as
        those steps are trained and logged again."""
        from tensorboardX import SummaryWriter

        self.folder = Path(log_dir) / name
        self.writer = SummaryWriter(logdir=str(self.folder), flush_secs=30,
                                    purge_step=resumed_step + 1 if resumed_step else None)
        from aa_jax.step import warmup_steps

        self.total = max(int(total_steps), 1)
        self.rise = warmup_steps(int(total_steps), config.warmup)
        self.rates = {group: float(getattr(config, field))
                      for group, field in learning_rates.items()}

    def learning_rate(self, group: str, step: int) -> float:
        """The rate of the update that step ``step`` (0-based) made."""
        rate = self.rates[group]
        if step < self.rise:
            return rate * step / self.rise
        return rate * max(0.0, 1.0 - (step - self.rise) / max(self.total - self.rise, 1))

    def epoch(self, first_step: int, losses: np.ndarray, grad_norms: np.ndarray,
              dev: Mapping[str, float], switch_probs: Mapping[str, float] | None) -> None:
        """One epoch: its step losses and gradient norms (steps ``first_step + 1`` ...,
        counted as the run's step counter counts them), its dev metrics and switches."""
        w = self.writer
        for i, (loss, norm) in enumerate(zip(losses, grad_norms)):
            step = first_step + i + 1
            w.add_scalar("train/loss", float(loss), step)
            w.add_scalar("train/grad_norm", float(norm), step)
            for group in self.rates:
                w.add_scalar(f"lr/{group}", self.learning_rate(group, step - 1), step)
        last = first_step + len(losses)
        for metric, value in dev.items():
            w.add_scalar(f"dev/{metric}", float(value), last)
        for layer, p in (switch_probs or {}).items():
            w.add_scalar(f"switch/layer_{layer}", float(p), last)
        w.flush()

    def close(self) -> None:
        self.writer.close()

"""Several seeds of one experiment trained together, as one vmapped program.

The paper reports every score as a mean over five seeds. Trained one after another, five
runs read the frozen backbone five times per step on small batches. :func:`train_seeds`
stacks the seeds' trainable states along a leading axis and runs one jitted ``vmap`` of
the train step (:func:`aa_jax.step.make_seeds_train_step`) through the one epoch loop
(:func:`aa_jax.train.epoch_loop`): one frozen backbone, held
once, and matmuls ``seeds x batch`` rows wide.

Each seed is still its own run, as :func:`aa_jax.train.train` would train it: its own data
sample, adapter / switch / rational init and training key (so its own dropout, Gumbel
and AdapterDrop draws), its own shuffle order, dev evaluation, best epoch, and its own
run directory with the files and checkpoints ``train`` writes. So ``aa-jax eval`` reads
such a run directory, and ``train`` resumes it.

A step's batches must share one shape, so each seed's batch is padded to the widest
sequence bucket among that step's batches (:func:`aa_jax.data.pipeline.widen`). The
padding is masked out of attention and pooling, and a token's dropout mask depends on its
position, not on the padded width (:func:`aa_jax.models.layers.dropout_keep_mask`), so each
seed computes its sequential run up to the rounding of batched kernels
(``tests/test_seeds.py`` checks it to 1e-10 in float64, widened steps and dropout
included, and on MiniLM in float32).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from aa_jax import checkpoint, run_lock
from aa_jax import train as training
from aa_jax.config import TrainConfig, precision_scope
from aa_jax.data import pipeline
from aa_jax.errors import UserError
from aa_jax.run_setup import check_same_run, resolve_inputs, run_keys, setup
from aa_jax.models.loader import load_pretrained
from aa_jax.step import (data_mesh, init_state, make_optimizer, make_predict,
                         make_seeds_train_step, stack_runs, unstack_run)


def train_seeds(configs: list[TrainConfig], out_dirs: list, progress: bool = True,
                pretrained=None) -> list[dict]:
    """Trains (or resumes, or returns the finished results of) runs that differ only in
    their seed, together; returns their results in the order of ``configs``.

    ``out_dirs[i]`` is the run directory of ``configs[i]``. Finished runs are returned as
    they are. The others resume from their latest checkpoints: seeds whose checkpoints
    are at the same epoch (or that have none) train together, and a seed whose latest
    epoch no other seed shares trains on its own with :func:`aa_jax.train.train`.

    Each ``result.json`` is the one ``train`` writes, plus ``seeds_together`` (the seeds
    of its group) and ``group_train_seconds`` (the group's training wall time);
    ``train_seconds`` is that wall time divided by the number of seeds in the group, each
    seed's share of it. Raises :class:`UserError` for configs that differ in more than
    the seed, repeated seeds or run directories, and for more than one device (data
    parallel and seeds together are not combined yet). A seed whose training diverges
    stops, the others finish, then its error is raised.
    """
    outs = _check_group(configs, out_dirs)
    results: list[dict | None] = [None] * len(configs)
    pending = []
    for i, (config, out) in enumerate(zip(configs, outs)):
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; pass a directory for the run.")
        if checkpoint.is_complete(out):
            check_same_run(out, config, resolve_inputs(config))
            results[i] = checkpoint.read_json(out / "result.json", "run result")
        else:
            pending.append(i)
    if not pending:
        return results
    pretrained = pretrained or load_pretrained(configs[0].model)

    by_epoch: dict[int, list[int]] = {}
    for i in pending:
        by_epoch.setdefault(_latest_epoch(outs[i]), []).append(i)
    for group in by_epoch.values():
        if len(group) > 1:
            done = _train_together([configs[i] for i in group], [outs[i] for i in group],
                                   progress, pretrained)
            for i, result in zip(group, done):
                results[i] = result
    for group in by_epoch.values():
        if len(group) == 1:
            i = group[0]
            results[i] = training.train(configs[i], outs[i], progress, pretrained)
    return results


def _check_group(configs: list[TrainConfig], out_dirs: list) -> list[Path]:
    """The run directories as paths, after the checks that need no files."""
    if len(configs) != len(out_dirs):
        raise UserError(f"train_seeds got {len(configs)} configs but {len(out_dirs)} run "
                        f"directories; pass one directory per seed.")
    for config in configs:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"train_seeds expects TrainConfig objects, got {type(config)}")
        config.validate()
    if configs:
        first = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
        for config in configs[1:]:
            other = config.to_dict()
            diff = sorted(k for k in first if first[k] != other[k])
            if diff:
                raise UserError(f"Seeds trained together must share every setting but the "
                                f"seed, and these runs also differ in {', '.join(diff)}; "
                                f"train them separately.")
    seeds = [c.seed for c in configs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"Seed {repeated[0]} is given more than once; list each seed once.")
    outs = [Path(d) for d in out_dirs]
    resolved = [p.resolve() for p in outs]
    shared = [p for p, r in zip(outs, resolved) if resolved.count(r) > 1]
    if shared:
        raise UserError(f"Several seeds would write to the run directory {shared[0]}; give "
                        f"each seed its own.")
    if data_mesh() is not None:
        raise UserError(f"Seeds cannot train together on {len(jax.devices())} devices yet, "
                        f"because data parallel and seeds-together training are not "
                        f"combined; make one device visible (e.g. CUDA_VISIBLE_DEVICES=0) "
                        f"or train the seeds one at a time.")
    return outs


def _latest_epoch(out: Path) -> int | None:
    """The epoch of the latest checkpoint in a run directory (None: no checkpoint)."""
    directory = out / "checkpoints"
    if not directory.is_dir():
        return None
    mgr = checkpoint.manager(directory, read_only=True)
    try:
        return mgr.latest_step()
    finally:
        mgr.close()


def shared_backbone(frozen: list[dict]) -> tuple[dict, dict | None]:
    """The seeds' frozen params as one tree for the vmapped step, and its ``vmap`` axes.

    A parameter every seed holds identically (the pretrained backbone) is passed once
    (axis ``None``); one that differs between seeds (a pooler that the checkpoint lacks,
    initialised from each seed's key) is stacked (axis 0). The axes are ``None`` when
    every parameter is shared.
    """
    flats = [flatten_dict(f) for f in frozen]
    tree, axes = {}, {}
    for path, first in flats[0].items():
        values = [f[path] for f in flats]
        same = all(v is first or np.array_equal(np.asarray(v), np.asarray(first))
                   for v in values[1:])
        tree[path] = first if same else jnp.stack(values)
        axes[path] = None if same else 0
    if all(axis is None for axis in axes.values()):
        return unflatten_dict(tree), None
    return unflatten_dict(tree), unflatten_dict(axes)


def stack_step_batches(batches: list[dict], pad_id: int) -> dict:
    """One batch per seed, widened to the widest of them and stacked on a seed axis."""
    width = max(b["input_ids"].shape[1] for b in batches)
    widened = [pipeline.widen(b, width, pad_id) for b in batches]
    return {k: np.stack([b[k] for b in widened]) for k in widened[0]}


def _train_together(configs: list[TrainConfig], outs: list[Path], progress: bool,
                    pretrained) -> list[dict]:
    """Trains seeds whose run directories are at the same epoch as one program."""
    started = time.perf_counter()
    exps, resolved = [], []
    for config, out in zip(configs, outs):
        resolved.append(resolve_inputs(config))
        exps.append(setup(config, pretrained))
        check_same_run(out, config, resolved[-1])
    c, exp0 = configs[0], exps[0]
    sizes = {len(e.labels["train"]) for e in exps}
    if len(sizes) > 1:  # a user dataset smaller than --train-size: train them one by one
        return [training.train(config, out, progress, pretrained)
                for config, out in zip(configs, outs)]
    for out in outs:
        training.prepare_run_dir(out)
    with contextlib.ExitStack() as held:
        for out in outs:
            held.enter_context(run_lock.hold_run(out))
        held.enter_context(run_lock.sigterm_raises())
        held.enter_context(precision_scope(c))
        return _train_held(configs, outs, exps, resolved, progress, started)


def _train_held(configs: list[TrainConfig], outs: list[Path], exps: list, resolved: list,
                progress: bool, started: float) -> list[dict]:
    """:func:`_train_together`'s work, in run directories this process holds."""
    c, exp0 = configs[0], exps[0]
    sizes = {len(e.labels["train"]) for e in exps}

    task, n = exp0.task, len(configs)
    seeds = [config.seed for config in configs]
    frozen, frozen_axes = shared_backbone([e.frozen for e in exps])
    steps_per_epoch = pipeline.num_batches(sizes.pop(), c.batch_size)
    tx = make_optimizer(c, steps_per_epoch * c.epochs, exp0.trainable,
                        exp0.method.learning_rates)
    drop_max, drop_first = exp0.method.adapterdrop_schedule(
        exp0.architecture.depth, c.adapterdrop_max, c.drop_first)
    step_fn = make_seeds_train_step(exp0.model, tx, task.is_regression, drop_max,
                                    frozen_axes)
    predict = make_predict(exp0.model, task.is_regression, drop_first)
    train_keys = stack_runs([run_keys(seed)[1] for seed in seeds])
    pad_id = exp0.encoded["train"].pad_id

    runs = [training.Run(exp, out, checkpoint.manager(out / "checkpoints",
                                                      c.checkpoints_to_keep),
                         predict, exp.frozen, res)
            for exp, out, res in zip(exps, outs, resolved)]
    with checkpoint.closing([run.mgr for run in runs]):
        states = [run.start(init_state(run.exp.trainable, tx)) for run in runs]
        starts = {run.log.start_epoch for run in runs}
        if len(starts) > 1:
            raise UserError(f"The checkpoints of seeds {seeds} record different epochs; "
                            f"train these seeds one at a time.")
        state = stack_runs(states)
        del states
        setup_seconds = time.perf_counter() - started
        # The checkpoints carry each seed's share of the group's time (see train_seeds).
        t0 = time.perf_counter() - sum(run.log.elapsed for run in runs)

        def batches(epoch: int):
            streams = [pipeline.batches(e.encoded["train"], e.labels["train"], c.batch_size,
                                        shuffle_seed=training.shuffle_seed(seed, epoch))
                       for e, seed in zip(exps, seeds)]
            for step_batches in zip(*streams, strict=True):
                yield stack_step_batches(list(step_batches), pad_id)

        training.epoch_loop(runs, state, step_fn, frozen, train_keys, batches, unstack_run,
                            progress, lambda: (time.perf_counter() - t0) / n)
    group_seconds = time.perf_counter() - t0
    extra = {"seeds_together": seeds, "group_train_seconds": round(group_seconds, 2)}
    results = [None if run.failure else
               run.finish(group_seconds / n, extra, setup_seconds=setup_seconds / n)
               for run in runs]
    failures = [run.failure for run in runs if run.failure]
    if failures:
        raise failures[0]
    return results

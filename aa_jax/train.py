"""A whole run: its directory, the one epoch loop, resuming, and evaluation.

:func:`train` runs (or resumes, or returns the finished result of) one experiment in a run
directory: data, model, epochs, dev evaluation after each epoch, best-epoch selection,
test evaluation, checkpoints (every ``checkpoint_every`` seconds and after the last epoch;
resumable), ``metrics.jsonl``, ``architecture.json`` and ``result.json``. A :class:`Run`
carries one run's context (its experiment, directory, checkpoint manager, predict function
and log) and does its bookkeeping; :func:`epoch_loop` trains one run, or several seeds
stacked as one program (:mod:`aa_jax.multi_seed`), through the same loop.

The pieces live in their own modules: the configuration in :mod:`aa_jax.config`, the
set-up in :mod:`aa_jax.run_setup`, the jitted step in :mod:`aa_jax.step`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from aa_jax import checkpoint, run_lock
from aa_jax.adapters import adapter_weight_count
from aa_jax.config import TrainConfig, precision_scope
from aa_jax.data import pipeline
from aa_jax.data.metrics import majority_class_scores
from aa_jax.diagnostics import STEP_KEYS, epoch_record, stack_steps
from aa_jax.distributed import is_primary, multi_process
from aa_jax.errors import UserError, check_writable, storage_error
from aa_jax.run_setup import (Experiment, check_same_run, load_data, load_run, relocate,
                               resolve_inputs, run_keys, setup)
from aa_jax.adapter_record import task_record
from aa_jax.learned import learned_architecture
from aa_jax.methods import layers_run
from aa_jax.params import count_params
from aa_jax.provenance import code_record
from aa_jax.step import (TrainState, check_batch_size, copy_tree, data_mesh, evaluate,
                         init_state, make_optimizer, make_predict, make_train_step, replicate)
from aa_jax.switch import ADAPTER


_clock = time.monotonic  # what checkpoint intervals are measured with (tests replace it)


def _progress(total: int, enabled: bool):
    """A bar over the run's training steps; tqdm shows steps/s, the postfix the epoch, the
    running loss and the last dev score."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, leave=False,
                dynamic_ncols=True)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle order (one integer from the run's seed and the epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def prepare_run_dir(out: Path) -> None:
    """Creates ``out`` and makes sure it takes files (or says in one sentence why not),
    before any training whose results could not be kept, and clears stale temp files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(out, e) or UserError(
            f"Cannot create the run directory {out} ({e.strerror or e}); choose a writable "
            f"--out.") from None
    check_writable(out, "The run directory")
    checkpoint.remove_stale_temp_files(out)


def device_name() -> str:
    """The backend and, where it says more, the kind of device: ``cpu``, ``gpu: NVIDIA
    H100 80GB HBM3``."""
    backend, kind = jax.default_backend(), jax.devices()[0].device_kind
    return backend if kind.lower() == backend else f"{backend}: {kind}"


def host_cpus() -> int:
    """How many CPUs this process may run on (its affinity, where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@dataclasses.dataclass
class RunLog:
    """The loop's bookkeeping that every checkpoint carries.

    ``best`` is the best epoch so far (``epoch``, its dev ``score`` and metrics ``dev``,
    and a copy of its trainable ``params``); ``history`` one record per finished epoch;
    ``start_epoch`` the next epoch to train; ``elapsed`` the training seconds so far.
    """

    best: dict
    history: list
    start_epoch: int = 1
    elapsed: float = 0.0


def resume(mgr, state: TrainState) -> tuple[TrainState, RunLog]:
    """The state and bookkeeping of the latest checkpoint in ``mgr``, or ``state`` and a
    fresh log when there is none."""
    log = RunLog(best={"epoch": 0, "score": -math.inf, "dev": None,
                       "params": copy_tree(state.trainable)}, history=[])
    if mgr.latest_step() is None:
        return state, log
    restored = checkpoint.restore(mgr, state.trainable, state.opt_state)
    meta = restored["meta"]
    state = state.replace(step=jnp.int32(meta["step"]), trainable=restored["params"],
                          opt_state=restored["opt_state"])
    log = RunLog(best={"epoch": meta["best_epoch"], "score": meta["best_score"],
                       "dev": meta["best_dev"], "params": restored["best_params"]},
                 history=meta["history"], start_epoch=meta["epoch"] + 1,
                 elapsed=meta["train_seconds"])
    return state, log


@dataclasses.dataclass
class Run:
    """One run's context: what its epochs' bookkeeping and its end need.

    Attributes:
      exp: the experiment (:func:`aa_jax.run_setup.setup`).
      out: the run directory.
      mgr: its checkpoint manager (open while training).
      predict: the jitted prediction function (:func:`aa_jax.step.make_predict`).
      frozen: the backbone params ``predict`` reads.
      resolved: what the config's locations resolved to (written into config.json).
      log: the epochs so far (:class:`RunLog`; set by :meth:`start`).
      failure: the error that stopped this run early (a diverged seed of a group).
      devices: how many devices its steps ran on.
      events: its TensorBoard event file with ``--log-dir`` (set by :meth:`start`).
    """

    exp: Experiment
    out: Path
    mgr: Any
    predict: Callable
    frozen: dict
    resolved: dict[str, Any]
    log: RunLog | None = None
    failure: UserError | None = None
    devices: int = 1
    events: Any = None

    def start(self, state: TrainState) -> TrainState:
        """Resumes from the latest checkpoint (if any) and writes ``config.json``; returns
        the state to train from."""
        state, self.log = resume(self.mgr, state)
        # Written only once the checkpoint (if any) is known to fit, so that a refused
        # resume leaves the directory as it was.
        if is_primary():
            checkpoint.write_json_atomic(self.out / "config.json", {
                **self.exp.config.to_dict(),
                "resolved": {**self.resolved, "pooling": self.exp.pooling}})
        _write_history(self.out, self.log.history)
        c = self.exp.config
        if c.log_dir and is_primary() and self.log.start_epoch <= c.epochs:
            from aa_jax.logs import EventLog

            steps = pipeline.num_batches(len(self.exp.labels["train"]), c.batch_size)
            self.events = EventLog(c.log_dir, self.out.name, c, steps * c.epochs,
                                   self.exp.method.learning_rates, int(state.step))
        return state

    def end_epoch(self, state: TrainState, epoch: int, losses: np.ndarray,
                  seconds: Callable[[], float], grad_norms: np.ndarray | None = None,
                  save: bool = True, measured: dict | None = None) -> dict:
        """An epoch's bookkeeping after its training steps: dev evaluation, best epoch,
        ``metrics.jsonl``, the event file and (``save``) the epoch's checkpoint. ``losses``
        (and ``grad_norms``) are the epoch's per-step values, ``measured`` the steps' other
        measurements, stacked (:func:`aa_jax.diagnostics.stack_steps`), ``seconds()`` the
        run's training seconds so far. Returns the dev metrics."""
        exp, log = self.exp, self.log
        task = exp.task
        dev = evaluate(self.predict, state.trainable, self.frozen, exp.encoded["dev"],
                       exp.labels["dev"], task, exp.config.batch_size)
        if dev[task.select_metric] > log.best["score"]:
            log.best = {"epoch": epoch, "score": dev[task.select_metric], "dev": dev,
                        "params": copy_tree(state.trainable)}
        record = {"epoch": epoch, "step": int(state.step), "loss": float(losses.mean()),
                  "dev": dev}
        learned = learned_architecture(state.trainable, exp.architecture, exp.source)
        if exp.architecture.switched_layers:
            record["switch_probs"] = {str(e["layer"]): e["switch_probs"][ADAPTER]
                                      for e in learned["layers"] if "switch_probs" in e}
        record.update(epoch_record(measured or {}, state.trainable,
                                   exp.architecture.rational_version))
        log.history.append(record)
        _write_history(self.out, log.history)
        if self.events is not None:
            norms = np.full(len(losses), np.nan) if grad_norms is None else grad_norms
            self.events.epoch(int(state.step) - len(losses), losses, norms, dev,
                              record.get("switch_probs"))
        if not save:
            return dev
        best = log.best
        meta = {"epoch": epoch, "step": int(state.step), "best_epoch": best["epoch"],
                "best_score": best["score"], "best_dev": best["dev"],
                "history": log.history, "train_seconds": seconds()}
        checkpoint.save(self.mgr, epoch, state.trainable, state.opt_state, best["params"],
                        learned, meta)
        return dev

    def finish(self, train_seconds: float, extra: dict[str, Any] | None = None,
               setup_seconds: float = 0.0) -> dict:
        """Test evaluation of the best epoch; writes ``architecture.json`` and
        ``result.json`` (with ``extra`` keys appended) and returns the result.
        ``setup_seconds``: the time before training began (data, model, optimizer,
        resuming), which the result adds to the test evaluation's as
        ``setup_and_test_seconds``."""
        exp, best = self.exp, self.log.best
        task, c = exp.task, exp.config
        if self.events is not None:
            self.events.close()
        started = time.perf_counter()
        test = evaluate(self.predict, best["params"], self.frozen, exp.encoded["test"],
                        exp.labels["test"], task, c.batch_size)
        setup_and_test = setup_seconds + time.perf_counter() - started
        learned = learned_architecture(best["params"], exp.architecture, exp.source)
        weights, biases = adapter_weight_count(exp.pretrained.config.hidden_size,
                                               exp.architecture,
                                               exp.pretrained.config.intermediate_size)
        result = {
            "task": task.name, "method": c.method, "model": c.model,
            "train_size": c.train_size, "seed": c.seed,
            "dev": best["dev"], "test": test, "best_epoch": best["epoch"],
            "select_metric": task.select_metric,
            # The task as exported (labels, metrics): 'aa-jax export' needs no data.
            "task_record": task_record(task),
            # What predicting the test set's most frequent class scores: the chance level.
            "majority": majority_class_scores(task, exp.labels["test"]),
            "selected_layers": layers_run(learned, exp.drop_first),
            "pooling": exp.pooling,
            "trainable_params": count_params(best["params"]),
            "adapter_weights": weights, "adapter_biases": biases,
            "train_seconds": round(train_seconds, 2),
            # The rest of the run's wall time, as its last process spent it (what --plan
            # adds).
            "setup_and_test_seconds": round(setup_and_test, 2),
            # Where it ran: a run's numbers differ in rounding from one device to another.
            # The devices and processes are what trained it: the step's mesh spans all
            # devices (seeds trained together run on one).
            "device": device_name(),
            "devices": self.devices, "processes": jax.process_count(),
            # The host CPUs it could use: XLA's CPU thread pool has a thread for each, and
            # on a CPU how a product's work is split among them changes its rounding.
            "cpus": host_cpus(),
            # The float32 matmul precision its programs were compiled with ("default" is
            # the device's: float32 on CPU, TF32 on recent GPUs), and the code that ran.
            "precision": str(jax.config.jax_default_matmul_precision or "default"),
            "code": code_record(),
            "examples": {k: int(len(v)) for k, v in exp.labels.items()},
        }
        note = exp.method.note(exp.architecture)
        if note:
            result["note"] = note
        result.update(extra or {})
        if is_primary():
            checkpoint.write_json_atomic(self.out / "architecture.json", learned)
            checkpoint.write_json_atomic(self.out / "result.json", result)
        return result


def epoch_loop(runs: list[Run], state: TrainState, step_fn: Callable, frozen: dict,
               train_keys: jax.Array, epoch_batches: Callable[[int], Iterable[dict]],
               unstack: Callable[[Any, int], TrainState], progress: bool,
               seconds: Callable[[], float]) -> None:
    """Trains ``runs`` from their common start epoch to the last, through one step function.

    One run: ``state`` is its state and ``unstack`` returns it. Several (seeds trained
    together): ``state`` stacks theirs, the step's metrics have a seed axis, and
    ``unstack(state, i)`` is run ``i``'s. ``epoch_batches(epoch)`` yields the epoch's
    (stacked) batches. After each epoch every run checks its losses, then evaluates and
    checkpoints (:meth:`Run.end_epoch`); a run whose training diverged stops with its
    error in ``failure`` while the others go on. An epoch is checkpointed when
    ``checkpoint_every`` seconds (wall time, its evaluations and saves included) have
    passed since the last checkpoint (or since the loop began), and the last epoch always
    is; the decision is the group's, so that seeds trained together stop at the same
    epoch, and process 0's, so that every process of a multi-host run saves (orbax's saves
    are collective) or none does.
    """
    c = runs[0].exp.config
    select = runs[0].exp.task.select_metric
    start = runs[0].log.start_epoch
    steps = pipeline.num_batches(len(runs[0].exp.labels["train"]), c.batch_size)
    bar = _progress(c.epochs * steps, progress)
    bar.update((start - 1) * steps)
    shown: dict[str, str] = {}
    saved_at = _clock()
    for epoch in range(start, c.epochs + 1):
        losses, grad_norms, measured = [], [], []
        for batch in epoch_batches(epoch):
            state, metrics = step_fn(state, frozen, batch, train_keys)
            if progress and losses:  # the previous step's loss: one step stays in flight
                running = float(np.mean(jax.device_get(losses[-1])))
                shown.update(epoch=str(epoch), loss=f"{running:.4f}")
                bar.set_postfix(shown, refresh=False)
            losses.append(metrics["loss"])
            grad_norms.append(metrics["grad_norm"])
            measured.append({k: metrics[k] for k in STEP_KEYS if k in metrics})
            bar.update(1)
        seeded = np.ndim(losses[0]) == 1  # several runs: the metrics have a seed axis
        measured = stack_steps(jax.device_get(measured))
        losses = np.asarray(jax.device_get(losses), np.float64).reshape(len(losses), -1)
        grad_norms = np.asarray(jax.device_get(grad_norms), np.float64).reshape(
            len(grad_norms), -1)
        now = _clock()
        save = checkpoint_due(epoch == c.epochs, now - saved_at, c.checkpoint_every)
        devs = []
        for i, run in enumerate(runs):
            if run.failure is not None:
                continue
            one = unstack(state, i)
            try:
                _check_finite(losses[:, i], grad_norms[:, i], one, epoch, run.mgr)
            except UserError as e:  # this run stops here; the others go on
                run.failure = e
                continue
            mine = jax.tree.map(lambda x, i=i: x[:, i], measured) if seeded else measured
            devs.append(run.end_epoch(one, epoch, losses[:, i], seconds,
                                      grad_norms[:, i], save, mine)[select])
        if not devs:
            break
        if save:
            saved_at = now
        shown.update(loss=f"{losses.mean():.4f}", **{f"dev_{select}": f"{np.mean(devs):.4f}"})
        bar.set_postfix(shown)
    bar.close()


def checkpoint_due(last_epoch: bool, elapsed: float, every: float) -> bool:
    """Whether this epoch is checkpointed: the last epoch always, any epoch with ``every``
    0, else once ``elapsed`` (wall seconds since the last checkpoint) reaches ``every`` on
    process 0's clock, broadcast so that all processes agree."""
    if last_epoch or every <= 0:
        return True
    due = elapsed >= every
    if multi_process():
        from jax.experimental import multihost_utils

        due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True,
          pretrained=None, on_start: Callable[[Experiment], None] | None = None) -> dict:
    """Runs (or resumes, or returns the finished result of) one experiment in ``out_dir``.
    ``on_start`` is called with the set-up experiment (its data loaded) before training
    (the command line says there what it trains on)."""
    started = time.perf_counter()
    code_record()  # taken as the run starts: the code this process imported
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory for the run.")
    config.validate()
    resolved = resolve_inputs(config)
    if checkpoint.is_complete(out):
        check_same_run(out, config, resolved)
        return checkpoint.read_json(out / "result.json", "run result")
    exp = setup(config, pretrained)
    check_same_run(out, config, resolved)
    if on_start is not None:
        on_start(exp)
    mesh = data_mesh()
    check_batch_size(config.batch_size, mesh)
    prepare_run_dir(out)
    with run_lock.hold_run(out), run_lock.sigterm_raises(), precision_scope(config):
        if checkpoint.is_complete(out):  # another process finished it in the meantime
            return checkpoint.read_json(out / "result.json", "run result")
        return _train_locked(exp, out, mesh, resolved, progress, started)


def _train_locked(exp: Experiment, out: Path, mesh, resolved: dict, progress: bool,
                  started: float) -> dict:
    """:func:`train`'s work, in a run directory this process holds."""
    task, c = exp.task, exp.config
    frozen = replicate(exp.frozen, mesh)
    steps_per_epoch = pipeline.num_batches(len(exp.labels["train"]), c.batch_size)
    tx = make_optimizer(c, steps_per_epoch * c.epochs, exp.trainable,
                        exp.method.learning_rates)
    drop_max, drop_first = exp.method.adapterdrop_schedule(
        exp.architecture.depth, c.adapterdrop_max, c.drop_first)
    step_fn = make_train_step(exp.model, tx, task.is_regression, drop_max, mesh)
    predict = make_predict(exp.model, task.is_regression, drop_first, mesh)

    run = Run(exp, out, checkpoint.manager(out / "checkpoints", c.checkpoints_to_keep),
              predict, frozen, resolved, devices=1 if mesh is None else mesh.size)
    with checkpoint.closing([run.mgr]):
        state = replicate(run.start(replicate(init_state(exp.trainable, tx), mesh)), mesh)
        run.log.best["params"] = replicate(run.log.best["params"], mesh)
        setup_seconds = time.perf_counter() - started
        t0 = time.perf_counter() - run.log.elapsed

        def batches(epoch: int):
            return pipeline.batches(exp.encoded["train"], exp.labels["train"], c.batch_size,
                                    shuffle_seed=shuffle_seed(c.seed, epoch))

        epoch_loop([run], state, step_fn, frozen, run_keys(c.seed)[1], batches,
                   lambda s, i: s, progress, lambda: time.perf_counter() - t0)
        if run.failure is not None:
            raise run.failure
    return run.finish(time.perf_counter() - t0, setup_seconds=setup_seconds)


def _check_finite(losses: np.ndarray, grad_norms: np.ndarray, state: TrainState, epoch: int,
                  mgr) -> None:
    """Stops a diverged run before its epoch is evaluated or checkpointed.

    Checked once per epoch (a per-step check would stall the device every step): the
    first step whose loss or gradient is non-finite, or, if only the final update
    overflowed, the epoch's last step. The epoch's state is dropped, so the newest
    checkpoint on disk is the last good one.
    """
    finite = np.isfinite(losses) & np.isfinite(grad_norms)
    # On the host, from each array's local copy (replicated, so whole even across hosts):
    # no program to compile, one transfer per array.
    params_ok = all(np.isfinite(np.asarray(x.addressable_data(0))).all()
                    for x in jax.tree.leaves(state.trainable))
    if finite.all() and params_ok:
        return
    first = int(np.argmin(finite)) if not finite.all() else len(losses) - 1
    step = int(state.step) - len(losses) + first + 1
    last = mgr.latest_step()
    kept = (f"the checkpoint of epoch {last} in {mgr.directory} is the last good state saved"
            if last is not None else "no checkpoint had been written yet")
    raise UserError(f"Training diverged at step {step} (epoch {epoch}): the loss or its "
                    f"gradients became non-finite and {kept}; lower the learning rates "
                    f"(--lr, --switch-lr, --rational-lr) and train into a new --out "
                    f"directory.")


def _write_history(out: Path, history: list[dict]) -> None:
    if not is_primary():
        return
    checkpoint.write_text_atomic(out / "metrics.jsonl",
                                 "".join(json.dumps(r) + "\n" for r in history))


def evaluate_run(run_dir: str | Path, pretrained=None, glue_dir: str | None = None,
                 data: list[str] | None = None) -> dict:
    """Dev and test metrics of a run's best epoch, recomputed from its checkpoint, or of
    an adapter folder (:mod:`aa_jax.export`) on the data of the run it came from;
    ``glue_dir`` / ``data`` point at that data where it moved
    (:func:`aa_jax.run_setup.relocate`)."""
    from aa_jax.export import adapter_config_folder, is_export, load_adapters, load_export

    mesh = data_mesh()
    if adapter_config_folder(run_dir) is not None:
        adapters = load_adapters(run_dir, pretrained=pretrained)
        c = relocate(TrainConfig.from_dict(adapters.record["config"]), {}, glue_dir, data)
        task, splits = load_data(c)
        encoded = {split: pipeline.encode(adapters.tokenizer, splits[split].texts,
                                          c.max_length) for split in ("dev", "test")}
        labels = {split: splits[split].labels for split in ("dev", "test")}
        model, drop_first = adapters.model, adapters.drop_first
        params, frozen = adapters.params, adapters.frozen
    else:
        if is_export(run_dir):
            exp, params = load_export(run_dir, pretrained)
        else:
            exp, params, _ = load_run(run_dir, pretrained, glue_dir, data)
        c, task, encoded, labels = exp.config, exp.task, exp.encoded, exp.labels
        model, drop_first, frozen = exp.model, exp.drop_first, exp.frozen
    check_batch_size(c.batch_size, mesh)
    predict = make_predict(model, task.is_regression, drop_first, mesh)
    params, frozen = replicate(params, mesh), replicate(frozen, mesh)
    with precision_scope(c):  # the precision the run trained and evaluated in
        return {split: evaluate(predict, params, frozen, encoded[split], labels[split], task,
                                c.batch_size)
                for split in ("dev", "test")}

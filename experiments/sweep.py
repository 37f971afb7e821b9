"""Runs a sweep: a base config plus a grid of overrides, one run directory per point.

    uv run python -m experiments.sweep experiments/sweeps/paper.json --glue-dir ../shared/glue

Runs execute one after another in this process and share the loaded backbone, the
allocator of ``aa-jax`` (mimalloc) and XLA's persistent compilation cache.

Where things go:
  * a run trains in ``runs/sweeps/<sweep>/<run>/`` (checkpoints included; not in git);
  * once it has finished, its config, metrics, architecture and result are copied to
    ``experiments/results/<sweep>/<run>/``, result.json last. That folder only ever holds
    finished runs (and ``failed.json`` records), so it can be committed at any moment.

Restarting is always safe: a finished run is skipped, an interrupted one resumes from its
last checkpoint. A run that raises is recorded in ``<results>/<run>/failed.json`` with its
error, the sweep goes on, and the next invocation tries it again. ``--shard i/n`` runs
every n-th (task, train size) cell, in the sweep's order, so that n machines can share a
sweep; a point whose reference (``"@aa"``) another shard has not produced yet is reported
as waiting. ``--workers n`` runs the n shards as n processes on this machine (for an
accelerator that one small model leaves idle: compilation and input run on the host's
cores). On a machine without one, ``--workers n --pin-cpus`` gives each process its own
share of the CPUs and lets it take the next run no other process holds, in the sweep's
order: small products cannot keep two cores busy. ``--plan`` prints what is
left and an estimate of its cost from the measured times of finished runs.
``--commit`` commits each finished run's files (or its failure record) to git as it
arrives, with the sweep's ``TABLE.md`` regenerated to include it (``python -m
experiments.aggregate`` draws the figures); the processes of one sweep publish and commit
one at a time.

The sweep file (grids, method labels, and values such as ``"@aa"`` that refer to other
runs) is described in :mod:`experiments.grid`; the rest of the runner is in
:mod:`experiments.publish` (the results folder and ``--commit``), :mod:`experiments.plan`
(``--plan``) and :mod:`experiments.workers` (``--workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from aa_jax import run_lock
from aa_jax.config import TrainConfig
from aa_jax.errors import StorageError, UserError, check_writable
from experiments.grid import REPO, Point, Sweep, Waiting, resolve, run_name, shard_of
from experiments.plan import plan
from experiments.publish import (commit_results, publish, publishing, record_failure,
                                 record_inputs, records_inputs)
from experiments.workers import pin_from_environment, run_workers


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write i/n with 1 <= i <= n, "
                                         f"e.g. 1/2.")
    return i, n


def train_points(sweep: Sweep, group: list[tuple[Point, TrainConfig]], backbone,
                 together: bool) -> list[dict]:
    from aa_jax.train import train

    if together and len(group) > 1:
        from aa_jax.multi_seed import train_seeds

        return train_seeds([c for _, c in group], [sweep.work_dir(p) for p, _ in group],
                           progress=False, pretrained=backbone)
    return [train(c, sweep.work_dir(p), progress=False, pretrained=backbone)
            for p, c in group]


def together_group(sweep: Sweep, first: Point, config: TrainConfig, todo: list[Point],
                   failed: set) -> list[tuple[Point, TrainConfig]]:
    """``first`` and the pending points that differ from it only in seed and resolve to
    the same config apart from the seed (AdapterDrop's per-seed drop or an AA-focused
    run's per-seed architecture keep them apart)."""
    group = [(first, config)]
    for p in todo:
        if p is first or p.label != first.label or run_name(p) in failed:
            continue
        if p.key("seed") != first.key("seed") or sweep.done(p):
            continue
        try:
            c = resolve(sweep, p)
        except (Waiting, UserError):
            continue
        if dataclasses.replace(c, seed=config.seed) == config:
            group.append((p, c))
    return group


def run(sweep: Sweep, shard: tuple[int, int] = (1, 1), together: bool = False,
        commit: bool = False, worker: tuple[int, int] | None = None,
        started: float | None = None) -> int:
    """Trains and publishes the shard's pending runs; returns 1 if any failed, else 0.
    ``worker=(i, n)`` (``--pin-cpus``) takes the whole sweep instead, as worker ``i`` of
    ``n`` that share it run by run: each trains the next run that no other holds, leaves
    alone a run that another worker of the same start (``started``, a time.time()) has
    recorded as failed, and waits while another still trains a run. Raises
    :class:`aa_jax.run_lock.Busy` when another process runs the same sweep (shard)."""
    todo = shard_of(sweep.points, shard)
    # Before any training: a result that could not be kept is not worth computing.
    check_writable(sweep.results, "The results folder")
    check_writable(sweep.work, "The work folder")
    # One process per sweep (and shard); shards of different counts may overlap, and
    # there the runs' own locks keep each run to one process.
    name, what = ".sweep.lock", f"The sweep {sweep.name}"
    if shard != (1, 1):
        name, what = f".sweep.shard-{shard[0]}-of-{shard[1]}.lock", \
            f"Shard {shard[0]}/{shard[1]} of the sweep {sweep.name}"
    if worker is not None:
        name, what = f".sweep.worker-{worker[0]}-of-{worker[1]}.lock", \
            f"Worker {worker[0]}/{worker[1]} of the sweep {sweep.name}"
    with run_lock.hold(sweep.work / name, what):
        return _run_held(sweep, todo, shard, together, commit, worker, started)


WORKER_POLL = 10.0  # seconds a worker waits before it looks again at runs others hold


def _run_held(sweep: Sweep, todo: list[Point], shard: tuple[int, int], together: bool,
              commit: bool, worker: tuple[int, int] | None = None,
              started: float | None = None) -> int:
    """:func:`run`'s loop, in a sweep this process holds."""
    from aa_jax.models.loader import load_pretrained

    total, failed, busy, waiting, backbones = len(todo), set(), set(), {}, {}
    crashed: set[str] = set()  # runs this process trained and that raised (counted tried)

    def failed_by_sibling(p: Point) -> bool:
        """Recorded as failed by another worker of this start: the next start retries it."""
        record = sweep.result_dir(p) / "failed.json"
        return (worker is not None and started is not None and record.is_file()
                and record.stat().st_mtime >= started)

    while True:
        nxt = None
        for p in todo:
            name = run_name(p)
            if name in failed or name in busy or sweep.done(p):
                continue
            if failed_by_sibling(p):
                failed.add(name)
                continue
            try:
                nxt = (p, resolve(sweep, p))
                break
            except Waiting as w:
                waiting[name] = str(w)
            except UserError as e:
                with publishing(sweep):
                    if not failed_by_sibling(p):
                        print(f"{name}: {e}", file=sys.stderr)
                        record_failure(sweep, p, e)
                        if commit:
                            commit_results(sweep, [p], f"Failed: {sweep.name}/{name}")
                failed.add(name)
        if nxt is None:
            # A worker waits while another still holds a run: that run, or one waiting
            # for it, may yet be its to train (or the holder may die and leave it).
            if worker is not None and any(not sweep.done(p) for p in todo
                                          if run_name(p) in busy - failed):
                time.sleep(WORKER_POLL)
                busy.clear()
                continue
            break
        point, config = nxt
        group = together_group(sweep, point, config, todo, failed | busy) if together \
            else [nxt]
        names = [run_name(p) for p, _ in group]
        # The runs stay locked until they are published: no other process trains or
        # publishes them meanwhile.
        with contextlib.ExitStack() as held:
            try:
                for p, _ in group:
                    sweep.work_dir(p).mkdir(parents=True, exist_ok=True)
                    held.enter_context(run_lock.hold_run(sweep.work_dir(p)))
                # Another process may have published one between the look above and the
                # lock: it is done, not to be trained again.
                if any(sweep.done(p) for p, _ in group):
                    continue
                finished = {run_name(p) for p in todo if sweep.done(p)}
                count = len(finished) + len(crashed - finished) + len(group)
                where = (f"worker {worker[0]}/{worker[1]}: " if worker else
                         f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else "")
                print(f"[{where}{count}/{total}] {', '.join(names)}: training", flush=True)
                if config.model not in backbones:
                    backbones[config.model] = load_pretrained(config.model)
                results = train_points(sweep, group, backbones[config.model], together)
            except run_lock.Busy as e:  # another process trains it: not a failure
                if worker is None:  # workers sharing a sweep meet each other's runs
                    print(f"    skipped: {' '.join(str(e).split())}", file=sys.stderr,
                          flush=True)
                busy.update(names)
                continue
            except StorageError:  # no other run could be kept either
                raise
            except Exception as e:  # noqa: BLE001 - recorded and the sweep goes on
                print(f"    failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                with publishing(sweep):
                    for p, _ in group:
                        record_failure(sweep, p, e)
                        failed.add(run_name(p))
                    crashed.update(names)
                    if commit:
                        commit_results(sweep, [p for p, _ in group],
                                       f"Failed: {sweep.name}/{', '.join(names)}")
                continue
            for (p, _), result in zip(group, results):
                waiting.pop(run_name(p), None)
                with publishing(sweep):
                    dst = publish(sweep, p)
                    if records_inputs(sweep, p):
                        record_inputs(sweep, p, backbones[config.model])
                    test = ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items())
                    print(f"    {dst.name}: test {test}; layers {result['selected_layers']}; "
                          f"{result['train_seconds']:.0f} s", flush=True)
                    if commit:
                        commit_results(sweep, [p], f"Results: {sweep.name}/{dst.name}")
    done = sum(sweep.done(p) for p in todo)
    still_waiting = {n: w for n, w in waiting.items() if n not in failed}
    busy -= {run_name(p) for p in todo if sweep.done(p)}
    print(f"{sweep.name}: {done} of {total} runs done"
          + (f", {len(failed)} failed (see failed.json)" if failed else "")
          + (f", {len(busy)} in training by another process" if busy else "")
          + (f", {len(still_waiting)} waiting for runs not finished here" if still_waiting
             else ""))
    for n, w in sorted(still_waiting.items()):
        print(f"    {n} waits for {w}")
    return 1 if failed else 0


def check_clean(allow_dirty: bool) -> None:
    """Refuses to run from a checkout with uncommitted changes (or from no checkout, where
    no commit can be recorded) unless ``allow_dirty``."""
    from aa_jax.provenance import ROOT, code_record

    code = code_record()
    if code.get("clean") is True or allow_dirty:
        return
    if "clean" not in code:
        why = (f"git could not read its commit ({code['git_error']})" if code.get("git_error")
               else "it is not a git checkout")
        raise UserError(f"The code at {ROOT} cannot be recorded by commit: {why}; run the "
                        f"sweep from a clone with a commit, or pass --allow-dirty to run "
                        f"anyway.")
    changed = code["changed"]
    raise UserError(f"The checkout has uncommitted changes ({', '.join(changed[:3])}"
                    f"{', ...' if len(changed) > 3 else ''}), so no result could name the "
                    f"code it ran; commit them (or stash them) first, or pass --allow-dirty "
                    f"to run anyway and record them.")


def together_wanted(choice: str) -> bool:
    if choice == "auto":
        import jax

        return jax.default_backend() != "cpu"
    return choice == "on"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep JSON file (see experiments/sweeps/)")
    parser.add_argument("--glue-dir", default=None)
    parser.add_argument("--out", default=None, help="results folder "
                        "(default experiments/results/<sweep name>)")
    parser.add_argument("--work", default=None, help="where runs train "
                        "(default runs/sweeps/<sweep name>)")
    parser.add_argument("--epochs", type=int, default=None, help="override for quick checks")
    parser.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="I/N")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the sweep in N processes on this machine: N shards of "
                        "cells, or with --pin-cpus N workers that share it run by run")
    parser.add_argument("--pin-cpus", action="store_true",
                        help="with --workers on a machine without an accelerator: each "
                        "worker runs on its own share of the CPUs (XLA's thread pool "
                        "sizes itself to them) and takes the next run no other worker "
                        "holds, in the sweep's order, instead of a shard of cells; fewer "
                        "CPUs per run split its products differently, so its numbers "
                        "differ in rounding (result.json records its cpus)")
    parser.add_argument("--together", nargs="?", const="on", default="auto",
                        choices=("auto", "on", "off"),
                        help="train the seeds of a cell as one vmapped program where their "
                        "configs allow it; auto (the default): on a GPU or TPU, not on a "
                        "CPU, where it measured slower")
    parser.add_argument("--plan", action="store_true",
                        help="print what is left and its estimated cost, run nothing")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished run's files as it arrives, with the "
                        "sweep's TABLE.md (and the results page's excerpt of it) refreshed")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run even though the checkout has uncommitted changes outside "
                        "experiments/results/ (each result records them); by default a "
                        "sweep runs only committed code, so that each result names the "
                        "commit it ran")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-of", type=parse_shard, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sweep = Sweep.load(args.sweep, args.glue_dir,
                           Path(args.out).resolve() if args.out else None,
                           Path(args.work).resolve() if args.work else None, args.epochs)
        if args.commit and REPO.resolve() not in sweep.results.resolve().parents:
            raise UserError(f"--commit commits results into this repository, but "
                            f"{sweep.results} is outside it; leave out --commit, or write "
                            f"the results under {REPO / 'experiments' / 'results'}.")
        if args.workers < 1 or (args.workers > 1 and args.shard != (1, 1)):
            raise UserError("--workers takes a count of at least 1 and splits the whole "
                            "sweep; give either --workers or --shard, not both.")
        if args.pin_cpus and args.workers < 2:
            raise UserError("--pin-cpus shares the CPUs among workers; give it with "
                            "--workers N, N at least 2.")
        if args.pin_cpus and args.together == "on":
            raise UserError("--pin-cpus trains one run at a time in each worker; leave out "
                            "--together, or leave out --pin-cpus to train seeds together.")
        if args.pin_cpus:
            args.together = "off"
        if args.plan:
            plan(sweep, shard_of(sweep.points, args.shard),
                 args.workers if args.pin_cpus else 1)
            return 0
        check_clean(args.allow_dirty)
        if args.workers > 1:
            return run_workers(args)
        return run(sweep, args.shard, together_wanted(args.together), args.commit,
                   args.worker_of, args.started)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        if not args.worker:
            print("sweep: interrupted; run the same command again to go on (finished runs "
                  "are kept, an unfinished one resumes from its last checkpoint).",
                  file=sys.stderr)
        return 130


if __name__ == "__main__":
    from aa_jax.allocator import reexec_with_mimalloc
    from aa_jax.cache import enable_compilation_cache

    pin_from_environment()
    reexec_with_mimalloc(["-m", "experiments.sweep", *sys.argv[1:]])
    enable_compilation_cache()
    # Whole lines, one write each: the shards of --workers share one terminal or pipe, and
    # under PYTHONUNBUFFERED a print's text and its newline would be two writes.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    sys.exit(main())
